"""hierparse.ops.upsample_decode against the float64 decode in plain PyTorch (F.interpolate in float64,
then argmax or path search): every mode, flat models, odd sizes, both align_corners, covered canvases,
dtypes, ties, near-ties, threads, instruction sets, bad input and torch.compile."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from hierparse import load_hierarchy, ops
from hierparse.inference import ancestor_table, decode_scores, node_scores
from hierparse.ops.reference import upsample_decode as reference_decode

pytestmark = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="needs the built extension")

LIP = load_hierarchy("lip")
CITYSCAPES = load_hierarchy("cityscapes")
MODES = ("independent", "consistent", "tree")


def random_logits(hierarchy, sizes, batch=2, seed=0, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, c, *size, generator=g) * scale).to(dtype) for c, size in zip(hierarchy.num_classes, sizes)]


def float64_decode(logits, hierarchy, size, mode, align_corners=False):
    """The decode before the op: upsample every level in float64, per-level scores, argmax or path search."""
    scores = [node_scores(F.interpolate(x.double(), size=size, mode="bilinear", align_corners=align_corners), mode)
              for x in logits]
    return decode_scores(scores, hierarchy, mode)


def assert_maps_equal(got, expected):
    assert len(got) == len(expected)
    for level, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape, level
        mismatched = int((g.long() != e.long()).sum())
        assert mismatched == 0, f"level {level}: {mismatched} of {e.numel()} pixels differ"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size,align_corners", [((37, 53), False), ((64, 64), True), ((61, 29), False),
                                                ((8, 7), False), ((5, 3), False), ((43, 47), True)])
def test_every_mode_matches_the_float64_decode(mode, size, align_corners):
    logits = random_logits(LIP, [(8, 7), (8, 7), (15, 13)], seed=hash((mode, size)) % 1000)
    got = ops.upsample_decode(logits, ancestor_table(LIP), size, mode, align_corners=align_corners)
    assert [m.dtype for m in got] == [torch.uint8] * 3
    assert_maps_equal(got, float64_decode(logits, LIP, size, mode, align_corners))


@pytest.mark.parametrize("mode", MODES)
def test_a_flat_model_gives_its_finest_argmax_and_its_ancestors(mode):
    logits = random_logits(LIP, [(9, 11)] * 3, seed=3)[-1:]
    got = ops.upsample_decode(logits, ancestor_table(LIP), (70, 45), mode)
    assert_maps_equal(got, float64_decode(logits, LIP, (70, 45), mode))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_are_decoded_from_their_exact_values(dtype):
    logits = random_logits(CITYSCAPES, [(6, 12), (6, 12)], seed=4, dtype=dtype)
    for mode in ("independent", "consistent"):
        got = ops.upsample_decode(logits, ancestor_table(CITYSCAPES), (48, 97), mode)
        assert_maps_equal(got, float64_decode(logits, CITYSCAPES, (48, 97), mode))


def test_strided_logits_and_a_batch_decode_image_by_image():
    logits = [x.transpose(2, 3).contiguous().transpose(2, 3) for x in random_logits(LIP, [(7, 9)] * 3, batch=3, seed=5)]
    assert not logits[0].is_contiguous()
    got = ops.upsample_decode(logits, ancestor_table(LIP), (50, 66), "consistent")
    assert_maps_equal(got, float64_decode(logits, LIP, (50, 66), "consistent"))
    for n in range(3):
        alone = ops.upsample_decode([x[n:n + 1] for x in logits], ancestor_table(LIP), (50, 66), "consistent")
        assert_maps_equal(alone, [m[n:n + 1] for m in got])


def test_covered_spans_the_top_left_part_of_the_logits_as_upsample_bilinear2d_with_scales():
    logits = random_logits(LIP, [(8, 10)] * 3, seed=6)
    covered = (0.9, 0.75)  # e.g. 36 of 40 canvas rows, 60 of 80 columns
    for mode in MODES:
        got = ops.upsample_decode(logits, ancestor_table(LIP), (45, 71), mode, covered=covered)
        expected = reference_decode([x.double() for x in logits], ancestor_table(LIP), (45, 71), mode, covered=covered)
        assert_maps_equal(got, expected)
    # the same as cropping: a canvas of exactly 2x the image, upsampled to 2x the output, cropped
    full = ops.upsample_decode(logits, ancestor_table(LIP), (32, 40), "independent")
    half = ops.upsample_decode(logits, ancestor_table(LIP), (16, 20), "independent", covered=(0.5, 0.5))
    assert_maps_equal(half, [m[:, :16, :20] for m in full])


def test_downsampling_and_equal_sizes_also_match():
    logits = random_logits(LIP, [(40, 30)] * 3, seed=7)
    for size in [(13, 11), (40, 30)]:
        got = ops.upsample_decode(logits, ancestor_table(LIP), size, "consistent")
        assert_maps_equal(got, float64_decode(logits, LIP, size, "consistent"))


CUDA_CASES = [  # logit sizes per level, output size, align_corners, covered
    ([(8, 7), (8, 7), (15, 13)], (37, 53), False, None),
    ([(60, 60), (60, 60), (119, 119)], (473, 473), False, None),
    ([(9, 11)] * 3, (64, 64), True, None),
    ([(12, 12)] * 3, (81, 70), False, (10 / 12, 9 / 12)),  # an image on 10x9 of a 12x12 canvas
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_cuda_gives_the_cpu_maps(mode, dtype):
    """The CUDA kernel (one thread per pixel, the same per-pixel decision) against the CPU op, which
    the tests above hold to the float64 decode; a flat model too."""
    for index, (sizes, size, align_corners, covered) in enumerate(CUDA_CASES):
        logits = random_logits(LIP, sizes, seed=20 + index, dtype=dtype)
        for levels in (logits, logits[-1:]):
            cpu = ops.upsample_decode(levels, ancestor_table(LIP), size, mode, align_corners=align_corners,
                                      covered=covered)
            gpu = ops.upsample_decode([x.cuda() for x in levels], ancestor_table(LIP), size, mode,
                                      align_corners=align_corners, covered=covered)
            assert all(m.is_cuda and m.dtype == c.dtype for m, c in zip(gpu, cpu))
            assert_maps_equal([m.cpu() for m in gpu], cpu)


def test_exact_ties_go_to_the_lowest_class():
    logits = random_logits(LIP, [(4, 4)] * 3, seed=8)
    for x in logits:
        x[:, -1] = x[:, 0]  # the last class of every level ties with the first everywhere
        x[:, 0] += 20  # ... and both win
        x[:, -1] += 20
    maps = ops.upsample_decode(logits, ancestor_table(LIP), (9, 9), "independent")
    assert all(bool((m == 0).all()) for m in maps)
    flat = ops.upsample_decode(logits[-1:], ancestor_table(LIP), (9, 9), "independent")
    assert bool((flat[-1] == 0).all())


def test_near_ties_that_float32_cannot_tell_apart_are_decided_in_float64():
    g = torch.Generator().manual_seed(9)
    base = torch.randn(1, 1, 6, 6, generator=g) * 30
    # two classes 1e-5 apart (of logits near 30: below float32's interpolation error), the lead changing sides
    delta = torch.where(torch.rand(1, 1, 6, 6, generator=g) < 0.5, -1e-5, 1e-5).double()
    fine = torch.cat([base.double(), base.double() + delta, base.double() - 40], 1)
    hierarchy = load_hierarchy("lip")
    logits = [torch.full((1, c, 6, 6), 0.0, dtype=torch.float64) for c in hierarchy.num_classes[:-1]]
    finest = torch.full((1, 20, 6, 6), -100.0, dtype=torch.float64)
    finest[:, :3] = fine
    logits.append(finest)
    got = ops.upsample_decode([x.float() for x in logits], ancestor_table(hierarchy), (23, 29), "independent")
    expected = float64_decode([x.float() for x in logits], hierarchy, (23, 29), "independent")
    assert_maps_equal(got, expected)
    assert set(expected[-1].unique().tolist()) == {0, 1}  # both sides won somewhere: the test has near-ties


def test_more_than_256_classes_give_int64_maps():
    ancestors = torch.stack([torch.arange(300) // 100, torch.arange(300)])
    logits = [torch.randn(1, 3, 4, 4), torch.randn(1, 300, 4, 4)]
    coarse, fine = ops.upsample_decode(logits, ancestors, (7, 7), "independent")
    assert coarse.dtype == torch.uint8 and fine.dtype == torch.int64
    assert torch.equal(fine, F.interpolate(logits[1].double(), size=(7, 7), mode="bilinear").argmax(1))


def test_results_do_not_depend_on_the_thread_count():
    logits = random_logits(CITYSCAPES, [(20, 40)] * 2, seed=10)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.upsample_decode(logits, ancestor_table(CITYSCAPES), (157, 318), "tree")
        torch.set_num_threads(2)
        two = ops.upsample_decode(logits, ancestor_table(CITYSCAPES), (157, 318), "tree")
    finally:
        torch.set_num_threads(previous)
    assert_maps_equal(one, two)


def test_every_instruction_set_gives_the_same_maps(tmp_path):
    script = (
        "import sys, torch; from hierparse import load_hierarchy, ops; from hierparse.inference import ancestor_table\n"
        "h = load_hierarchy('lip'); g = torch.Generator().manual_seed(0)\n"
        "logits = [torch.randn(2, c, 9, 7, generator=g) * 3 for c in h.num_classes]\n"
        "maps = [ops.upsample_decode(logits, ancestor_table(h), (61, 45), m) for m in ('independent', 'consistent', 'tree')]\n"
        "torch.save(maps, sys.argv[1])\n"
    )
    results = {}
    for capability in ("default", ops.cpu_capability()):
        path = tmp_path / f"{capability}.pt"
        env = {**os.environ, "HIERPARSE_CPU_CAPABILITY": capability}
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env, timeout=120)
        results[capability] = torch.load(path)
    for got, expected in zip(results["default"], results[ops.cpu_capability()]):
        assert_maps_equal(got, expected)


def test_empty_inputs_give_empty_maps():
    logits = random_logits(LIP, [(4, 4)] * 3, batch=0)
    assert [tuple(m.shape) for m in ops.upsample_decode(logits, ancestor_table(LIP), (8, 8))] == [(0, 8, 8)] * 3
    logits = random_logits(LIP, [(4, 4)] * 3, batch=1)
    assert [tuple(m.shape) for m in ops.upsample_decode(logits, ancestor_table(LIP), (0, 8))] == [(1, 0, 8)] * 3


@pytest.mark.parametrize("change,message", [
    (lambda a: {"mode": "greedy"}, "unknown decode mode"),
    (lambda a: {"logits": a["logits"][:2]}, "levels of logits"),
    (lambda a: {"logits": [a["logits"][0], torch.randn(2, 3, 4, 4), a["logits"][2]]}, "has ancestor"),
    (lambda a: {"logits": [x.long() for x in a["logits"]]}, "floating point"),
    (lambda a: {"logits": [a["logits"][0][:1], *a["logits"][1:]]}, "logits of level 1 must be"),
    (lambda a: {"ancestors": a["ancestors"].int()}, "int64 CPU tensor"),
    (lambda a: {"ancestors": a["ancestors"][:, :19]}, "finest classes"),
    (lambda a: {"size": (-1, 4)}, "size must be"),
    (lambda a: {"covered": (0.5, 0.5), "align_corners": True}, "covered must be"),
    (lambda a: {"covered": (1.5, 0.5)}, "covered must be"),
])
def test_bad_input_is_one_line_naming_what_is_wrong(change, message):
    arguments = {"logits": random_logits(LIP, [(4, 4)] * 3), "ancestors": ancestor_table(LIP), "size": (8, 8),
                 "mode": "independent"}
    arguments.update(change(arguments))
    with pytest.raises(ValueError, match=message) as error:
        ops.upsample_decode(arguments.pop("logits"), arguments.pop("ancestors"), arguments.pop("size"),
                            arguments.pop("mode"), **arguments)
    assert "\n" not in str(error.value).split("\nException raised from")[0].strip()


def test_registered_for_the_dispatcher_and_torch_compile():
    logits = random_logits(LIP, [(6, 6)] * 3, seed=11)
    ancestors = ancestor_table(LIP)
    torch.library.opcheck(torch.ops.hierparse.upsample_decode.default, (logits, ancestors, [20, 22], 1, False, None),
                          test_utils=("test_schema", "test_faketensor"))

    def parse(levels):
        return ops.upsample_decode([x * 2 for x in levels], ancestors, (20, 22), "consistent")

    compiled = torch.compile(parse, fullgraph=True, backend="aot_eager")
    assert_maps_equal(compiled(logits), parse(logits))


def test_the_decomposition_is_the_same_decode_in_standard_operators():
    logits = random_logits(LIP, [(8, 7), (8, 7), (15, 13)], seed=12)
    for mode in MODES:
        expected = ops.upsample_decode(logits, ancestor_table(LIP), (33, 41), mode)
        plain = reference_decode([x.double() for x in logits], ancestor_table(LIP), (33, 41), mode)
        assert [m.dtype for m in plain] == [m.dtype for m in expected]
        assert_maps_equal(plain, expected)
