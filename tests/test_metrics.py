"""hierparse.metrics: hand-computed confusion matrices, independent numpy references, the official
Cityscapes evaluation, merging across processes, bad input."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hierparse import load_hierarchy
from hierparse.hierarchy import hierarchy_from_yaml
from hierparse.metrics import ParsingMetrics, format_metrics

# Two levels: A = {a1, a2}, b continues unchanged. Raw id 0 is ignored, 255 is ignore_index.
TINY_YAML = """
name: tiny
levels: [coarse, fine]
ignore_ids: [0]
classes:
  - name: A
    children:
      - {name: a1, ids: 1}
      - {name: a2, ids: 2}
  - {name: b, ids: 3}
"""

# Fine targets:   a1 a1 a2 b | b  -  a2 -      (- = ignored)
# Coarse targets: A  A  A  b | b  -  A  -
TINY_LABELS = torch.tensor([[[1, 1, 2, 3], [3, 0, 2, 255]]], dtype=torch.uint8)
TINY_FINE_PRED = torch.tensor([[[0, 1, 1, 2], [0, 2, 0, 1]]])
# Of the ignored pixels, 5 is consistent (fine b under coarse b) and 7 is not (fine a2 under coarse
# b); neither may count.
TINY_COARSE_PRED = torch.tensor([[[0, 0, 1, 1], [0, 1, 0, 1]]])

# Worked out by hand, pixel by pixel (rows ground truth, columns prediction):
# fine: (a1,a1) (a1,a2) (a2,a2) (b,b) (b,a1) (a2,a1)
TINY_FINE_CONFUSION = [[1, 1, 0], [1, 1, 0], [1, 0, 1]]
# coarse module: (A,A) (A,A) (A,b) (b,b) (b,A) (A,A)
TINY_COARSE_CONFUSION = [[3, 1], [1, 1]]
# fine merged up: the fine prediction's parents a1->A, a2->A, b->b against the coarse targets
TINY_MERGED_CONFUSION = [[4, 0], [1, 1]]


@pytest.fixture
def tiny():
    return hierarchy_from_yaml(TINY_YAML, "tiny.yaml")


@pytest.fixture
def tiny_result(tiny):
    metrics = ParsingMetrics(tiny)
    metrics.update([TINY_COARSE_PRED, TINY_FINE_PRED], TINY_LABELS)
    return metrics, metrics.compute()


def random_batch(hierarchy, shape, seed, agree=0.6):
    """Raw labels over all declared ids and per-level predictions that often match them."""
    generator = torch.Generator().manual_seed(seed)
    declared = torch.tensor(hierarchy.declared_ids(), dtype=torch.uint8)
    labels = declared[torch.randint(len(declared), shape, generator=generator)]
    table = hierarchy.exact_table()  # coarse labels: ignored below their level
    preds = []
    for level, classes in enumerate(hierarchy.num_classes):
        target = table[level, labels.long()]
        guess = torch.randint(classes, shape, generator=generator)
        copy_target = (torch.rand(shape, generator=generator) < agree) & (target != hierarchy.ignore_index)
        preds.append(torch.where(copy_target, target, guess))
    return preds, labels


def numpy_confusion(truth: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """Reference confusion matrix by scattered adds (truth rows, prediction columns)."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (truth, pred), 1)
    return matrix


def numpy_iou(matrix: np.ndarray) -> np.ndarray:
    """IoU = TP / (TP + FP + FN), NaN where that is 0."""
    tp = np.diag(matrix).astype(float)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)


def assert_same_floats(actual, expected):
    """Equal to 1e-12 relative, NaN where the other is NaN."""
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------- hand-computed tiny example
def test_confusion_matrices_by_hand(tiny_result):
    metrics, _ = tiny_result
    coarse, fine = metrics.confusion_matrices
    assert fine.tolist() == TINY_FINE_CONFUSION
    assert coarse.tolist() == TINY_COARSE_CONFUSION
    assert fine.dtype == torch.int64
    assert metrics.merged_confusion(0).tolist() == TINY_MERGED_CONFUSION
    assert metrics.merged_confusion(1).tolist() == TINY_FINE_CONFUSION


def test_scores_by_hand(tiny_result):
    _, result = tiny_result
    fine = result["levels"][1]
    assert (fine["name"], fine["level"], fine["classes"]) == ("fine", 1, ["a1", "a2", "b"])
    # TP [1, 1, 1], ground truth [2, 2, 2], predicted [3, 2, 1]
    assert_same_floats(fine["iou"], [1 / 4, 1 / 3, 1 / 2])
    assert fine["miou"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 2) / 3)
    assert fine["pixel_acc"] == pytest.approx(3 / 6)
    assert fine["mean_acc"] == pytest.approx(1 / 2)
    assert_same_floats(fine["f1"], [2 / 5, 2 / 4, 2 / 3])
    assert fine["mean_f1"] == pytest.approx((2 / 5 + 2 / 4 + 2 / 3) / 3)

    coarse = result["levels"][0]
    assert (coarse["name"], coarse["classes"]) == ("coarse", ["A", "b"])
    # TP [3, 1], ground truth [4, 2], predicted [4, 2]
    assert_same_floats(coarse["iou"], [3 / 5, 1 / 3])
    assert coarse["pixel_acc"] == pytest.approx(4 / 6)
    assert coarse["mean_acc"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert_same_floats(coarse["f1"], [6 / 8, 2 / 4])

    merged = result["merged"][0]
    # TP [4, 1], ground truth [4, 2], predicted [5, 1]
    assert_same_floats(merged["iou"], [4 / 5, 1 / 2])
    assert merged["pixel_acc"] == pytest.approx(5 / 6)
    assert merged["mean_acc"] == pytest.approx((1 + 1 / 2) / 2)
    assert_same_floats(merged["f1"], [8 / 9, 2 / 3])
    assert result["merged"][1] == fine


def test_consistency_by_hand(tiny_result):
    _, result = tiny_result
    # valid pixels 0,1,2,3,4,6; pixel 2 has fine a2 (parent A) under coarse b. Counting the ignored
    # pixels would give 6/8, counting them only as agreeing 6/6.
    assert result["consistency"] == pytest.approx(5 / 6)


def test_consistency_three_levels_needs_every_level_to_agree():
    hierarchy = load_hierarchy("pascal_person_part")  # half > group > part
    head = hierarchy.class_names(2).index("Head")
    head_torso = hierarchy.class_names(1).index("Head-torso")
    arms = hierarchy.class_names(1).index("Arms")
    upper, lower = hierarchy.class_names(0).index("Upper-body"), hierarchy.class_names(0).index("Lower-body")
    labels = hierarchy.fine_to_raw()[torch.full((1, 1, 3), head)]
    half = torch.tensor([[[upper, lower, upper]]])
    group = torch.tensor([[[head_torso, head_torso, arms]]])
    part = torch.full((1, 1, 3), head)
    metrics = ParsingMetrics(hierarchy)
    metrics.update([half, group, part], labels)
    # pixel 0 agrees everywhere; pixel 1 disagrees at the top; pixel 2 only in the middle level
    assert metrics.compute()["consistency"] == pytest.approx(1 / 3)


def test_absent_classes_are_nan_and_skipped_in_means(tiny):
    metrics = ParsingMetrics(tiny)
    labels = torch.tensor([[1, 1, 1, 1]], dtype=torch.uint8)  # only a1 in the ground truth
    fine = torch.tensor([[0, 0, 1, 1]])  # a2 predicted but absent; b nowhere
    coarse = torch.zeros_like(fine)
    metrics.update([coarse, fine], labels)
    result = metrics.compute()["levels"][1]
    assert result["iou"][:2] == [0.5, 0.0]
    assert math.isnan(result["iou"][2])
    assert result["miou"] == pytest.approx(0.25)
    assert result["f1"][:2] == [pytest.approx(2 / 3), 0.0]
    assert math.isnan(result["f1"][2])
    assert result["mean_acc"] == pytest.approx(0.5)  # a2 and b have no ground truth: NaN accuracy


def test_nothing_valid_gives_nan_not_an_error(tiny):
    metrics = ParsingMetrics(tiny)
    labels = torch.tensor([[0, 255]], dtype=torch.uint8)
    metrics.update([torch.zeros(1, 2, dtype=torch.long)] * 2, labels)
    result = metrics.compute()
    assert all(math.isnan(value) for value in result["levels"][1]["iou"])
    assert math.isnan(result["levels"][1]["miou"]) and math.isnan(result["merged"][0]["pixel_acc"])
    assert math.isnan(result["consistency"])


def test_fine_map_only(tiny):
    metrics = ParsingMetrics(tiny)
    metrics.update(TINY_FINE_PRED, TINY_LABELS)
    result = metrics.compute()
    assert [entry["level"] for entry in result["levels"]] == [1]
    assert_same_floats(result["levels"][0]["iou"], [1 / 4, 1 / 3, 1 / 2])
    assert_same_floats(result["merged"][0]["iou"], [4 / 5, 1 / 2])
    assert math.isnan(result["consistency"])
    assert metrics.confusion_matrices[0].sum() == 0


# ---------------------------------------------------------------------- independent references
def test_three_levels_against_numpy():
    hierarchy = load_hierarchy("pascal_person_part")
    preds, labels = random_batch(hierarchy, (3, 17, 23), seed=1)
    metrics = ParsingMetrics(hierarchy)
    metrics.update(preds, labels)
    result = metrics.compute()

    # Reference route: the label table (raw id -> class per level), never the parents lists.
    table = hierarchy.label_table().numpy()
    raw = labels.numpy().ravel()
    fine_pred = preds[-1].numpy().ravel()
    fine_pred_as_raw = hierarchy.fine_to_raw().numpy()[fine_pred]
    valid = table[-1, raw] != hierarchy.ignore_index
    agree = np.ones(valid.sum(), dtype=bool)
    for level, classes in enumerate(hierarchy.num_classes):
        truth = table[level, raw][valid]
        module = numpy_confusion(truth, preds[level].numpy().ravel()[valid], classes)
        merged = numpy_confusion(truth, table[level, fine_pred_as_raw][valid], classes)
        assert metrics.confusion_matrices[level].numpy().tolist() == module.tolist()
        assert metrics.merged_confusion(level).numpy().tolist() == merged.tolist()
        assert_same_floats(result["levels"][level]["iou"], numpy_iou(module))
        assert_same_floats(result["merged"][level]["iou"], numpy_iou(merged))
        assert result["merged"][level]["pixel_acc"] == pytest.approx(np.trace(merged) / merged.sum())
        agree &= table[level, fine_pred_as_raw][valid] == preds[level].numpy().ravel()[valid]
    assert result["consistency"] == pytest.approx(agree.mean())


def test_split_batches_merge_to_one_pass():
    hierarchy = load_hierarchy("lip")
    preds, labels = random_batch(hierarchy, (4, 12, 10), seed=2)
    whole = ParsingMetrics(hierarchy)
    whole.update(preds, labels)
    first, second = ParsingMetrics(hierarchy), ParsingMetrics(hierarchy)
    first.update([pred[:1] for pred in preds], labels[:1])
    second.update([pred[1:] for pred in preds], labels[1:])
    by_state = ParsingMetrics(hierarchy)
    by_state.load_state(first.state() + second.state())
    first.merge(second)
    assert torch.equal(first.state(), whole.state())
    assert torch.equal(by_state.state(), whole.state())
    assert repr(first.compute()) == repr(whole.compute())  # repr: NaN == NaN


def test_reset_and_all_reduce_without_distributed(tiny):
    metrics = ParsingMetrics(tiny)
    metrics.update([TINY_COARSE_PRED, TINY_FINE_PRED], TINY_LABELS)
    before = metrics.state().clone()
    metrics.all_reduce()  # not initialised: nothing to sum
    assert torch.equal(metrics.state(), before)
    metrics.reset()
    assert metrics.state().sum() == 0
    metrics.update(TINY_FINE_PRED, TINY_LABELS)  # after a reset the other form of preds is allowed
    assert metrics.confusion_matrices[1].tolist() == TINY_FINE_CONFUSION


def _all_reduce_worker(rank: int, store_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    hierarchy = load_hierarchy("lip")
    preds, labels = random_batch(hierarchy, (4, 12, 10), seed=2)
    metrics = ParsingMetrics(hierarchy)
    metrics.update([pred[2 * rank : 2 * rank + 2] for pred in preds], labels[2 * rank : 2 * rank + 2])
    metrics.all_reduce()
    torch.save(metrics.state(), f"{out_path}.{rank}")
    dist.destroy_process_group()


def test_all_reduce_across_two_processes(tmp_path):
    mp.spawn(_all_reduce_worker, args=(str(tmp_path / "store"), str(tmp_path / "state")), nprocs=2)
    hierarchy = load_hierarchy("lip")
    preds, labels = random_batch(hierarchy, (4, 12, 10), seed=2)
    whole = ParsingMetrics(hierarchy)
    whole.update(preds, labels)
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"state.{rank}"), whole.state())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counts_on_the_cuda_device_of_the_inputs():
    hierarchy = load_hierarchy("pascal_person_part")
    preds, labels = random_batch(hierarchy, (2, 9, 7), seed=3)
    on_cpu = ParsingMetrics(hierarchy)
    on_cpu.update(preds, labels)
    on_gpu = ParsingMetrics(hierarchy)
    on_gpu.update([pred.cuda() for pred in preds], labels.cuda())
    assert on_gpu.state().is_cuda
    assert torch.equal(on_gpu.state().cpu(), on_cpu.state())
    assert repr(on_gpu.compute()) == repr(on_cpu.compute())


# ---------------------------------------------------------------------- official Cityscapes evaluation
def test_cityscapes_matches_official_evaluation(tmp_path):
    official = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    from PIL import Image

    hierarchy = load_hierarchy("cityscapes")
    generator = torch.Generator().manual_seed(4)
    train = hierarchy.class_names(1).index("train")
    # Label ids 0..33 (ignored ones included) except train, which then is absent from both sides.
    raw_ids = torch.tensor([i for i in range(34) if i != 31], dtype=torch.uint8)
    labels = raw_ids[torch.randint(len(raw_ids), (3, 24, 32), generator=generator)]
    target = hierarchy.label_table()[1, labels.long()]
    guess = torch.randint(hierarchy.num_classes[1] - 1, labels.shape, generator=generator)
    guess = guess + (guess >= train).long()  # never predict train
    copy_target = (torch.rand(labels.shape, generator=generator) < 0.5) & (target != hierarchy.ignore_index)
    fine_pred = torch.where(copy_target, target, guess)

    metrics = ParsingMetrics(hierarchy)
    metrics.update(fine_pred, labels)
    result = metrics.compute()

    pred_files, truth_files = [], []
    for index, (pred_image, label_image) in enumerate(zip(hierarchy.to_raw(fine_pred), labels)):
        pred_files.append(str(tmp_path / f"pred{index}.png"))
        truth_files.append(str(tmp_path / f"img{index}_gtFine_labelIds.png"))
        Image.fromarray(pred_image.numpy()).save(pred_files[-1])
        Image.fromarray(label_image.numpy()).save(truth_files[-1])
    args = copy.copy(official.args)
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    scores = official.evaluateImgLists(pred_files, truth_files, args)

    classes = result["levels"][0]
    assert classes["classes"] == hierarchy.class_names(1)
    assert_same_floats(classes["iou"], [scores["classScores"][name] for name in classes["classes"]])
    assert math.isnan(classes["iou"][train])
    assert classes["miou"] == pytest.approx(scores["averageScoreClasses"], abs=1e-12)
    categories = result["merged"][0]
    assert_same_floats(categories["iou"], [scores["categoryScores"][name] for name in categories["classes"]])
    assert categories["miou"] == pytest.approx(scores["averageScoreCategories"], abs=1e-12)


# ---------------------------------------------------------------------- formatting
def test_format_metrics_table(tiny_result):
    _, result = tiny_result
    text = format_metrics(result)
    lines = text.splitlines()
    assert "level 0 (coarse, 2 classes)" in text and "level 1 (fine, 3 classes)" in text
    assert ["  A", "60.00", "80.00"] == next(line for line in lines if line.startswith("  A")).rsplit(None, 2)
    assert next(line for line in lines if line.startswith("  a2")).split() == ["a2", "33.33"]
    assert [line.split()[-1] for line in lines if line.startswith("mIoU")] == ["65.00", "36.11"]
    assert lines[-1].split()[-1] == "83.33"


def test_format_metrics_fine_only_marks_nan(tiny):
    metrics = ParsingMetrics(tiny)
    metrics.update(torch.tensor([[0, 0]]), torch.tensor([[1, 1]], dtype=torch.uint8))
    lines = format_metrics(metrics.compute()).splitlines()
    assert next(line for line in lines if line.startswith("level 0")).split()[-1] == "merged"
    assert next(line for line in lines if line.startswith("  b")).split() == ["b", "-"]
    assert lines[-1].split()[-1] == "-"


# ---------------------------------------------------------------------- bad input
COARSE, FINE, LABELS = TINY_COARSE_PRED, TINY_FINE_PRED, TINY_LABELS


@pytest.mark.parametrize(
    ("preds", "labels", "message"),
    [
        ([FINE], LABELS, r"hierarchy 'tiny' has 2 levels \(coarse, fine\); got 1 prediction maps"),
        ([COARSE] * 3, LABELS, "got 3 prediction maps"),
        (
            [COARSE, FINE[..., :3]],
            LABELS,
            r"level 1 \(fine\) has shape \(1, 2, 3\), labels have shape \(1, 2, 4\)",
        ),
        (FINE.reshape(2, 4), LABELS, r"shape \(2, 4\)"),
        ([COARSE + 1, FINE], LABELS, r"level 0 \(coarse\) holds class index 2, outside 0\.\.1"),
        ([COARSE, FINE - 1], LABELS, r"level 1 \(fine\) holds class index -1, outside 0\.\.2"),
        (FINE.to(torch.uint8) + 1, LABELS, r"level 1 \(fine\) holds class index 3"),
        ([COARSE, FINE.float()], LABELS, r"level 1 \(fine\) must be an integer tensor.*torch.float32"),
        (FINE, LABELS.float(), "labels must be an integer tensor of raw ids, got a torch.float32"),
        (FINE, LABELS.long() + 250, "labels hold raw id 505, outside 0..255"),
        (FINE, LABELS.long() - 1, "labels hold raw id -1"),
    ],
)
def test_bad_input_is_a_one_line_value_error(tiny, preds, labels, message):
    metrics = ParsingMetrics(tiny)
    with pytest.raises(ValueError, match=message) as error:
        metrics.update(preds, labels)
    assert "\n" not in str(error.value)
    assert metrics.state().sum() == 0  # nothing half-counted


def test_mixing_prediction_forms_is_refused(tiny):
    metrics = ParsingMetrics(tiny)
    metrics.update([TINY_COARSE_PRED, TINY_FINE_PRED], TINY_LABELS)
    with pytest.raises(ValueError, match="finest-only prediction after per-level ones; call reset"):
        metrics.update(TINY_FINE_PRED, TINY_LABELS)
    fine_only = ParsingMetrics(tiny)
    fine_only.update(TINY_FINE_PRED, TINY_LABELS)
    with pytest.raises(ValueError, match="per-level predictions after finest-only ones"):
        fine_only.update([TINY_COARSE_PRED, TINY_FINE_PRED], TINY_LABELS)
    metrics.merge(fine_only)
    with pytest.raises(ValueError, match="mix per-level and finest-only"):
        metrics.compute()


def test_state_of_another_hierarchy_is_refused(tiny):
    with pytest.raises(ValueError, match=r"hierarchy 'tiny' has shape \(16,\), got \(3,\)"):
        ParsingMetrics(tiny).load_state(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="hierarchy 'tiny' has shape"):
        ParsingMetrics(tiny).merge(ParsingMetrics("lip"))
