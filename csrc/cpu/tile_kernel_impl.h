// The CPU tile kernel, included once per instruction set by tile_kernel_<isa>.cpp, which defines
// HP_ISA (the namespace of this copy), HP_VECTOR_BYTES (its register width) and HP_BLOCK_VECTORS
// (vectors per pixel block: as many as the registers hold, so that a block's running max, sum and
// target values stay in registers).
//
// For each level of a tile, pixels go in blocks of HP_BLOCK_VECTORS vectors, one pixel per lane:
//   pass 1 reads each class plane of the block once (through an access: StridedAccess, or a blend of
//          rows for levels upsampled in the op) into an L1 scratch copy, keeping
//          the running max and picking the target's logit (and class weight) by comparison;
//   pass 2 turns the copy into exp(x - max) and sums it (and sum_c w_c (x_c - max) with smoothing);
//   then log, loss and the softmax coefficient per pixel;
//   pass 3 writes the gradients (streamed past the caches when they are large), interleaved with
//          pass 2 of the next block.
// A pixel labelled with a class set (a node above the level) is scored lane by lane after pass 1
// (score_set_lanes): its "target logit" becomes the set's log-sum-exp, and its members' shares of
// the set's probability go to a second scratch block for pass 3. Blocks without such a pixel skip
// this, and compute exactly what they computed before sets existed.
// Each pass runs over the classes with the block's vectors unrolled inside, so memory is read
// as C short sequential streams, prefetched into L2 a few blocks ahead.
#ifndef HP_ISA
#error "define HP_ISA, HP_VECTOR_BYTES and HP_BLOCK_VECTORS before including tile_kernel_impl.h"
#endif

#include <cmath>

#include "cpu/tile_kernel.h"
#include "cpu/vec.h"
#include "multilevel_ce.h"

namespace hierparse {
namespace cpu {
namespace HP_ISA {

constexpr int kBlockVectors = HP_BLOCK_VECTORS;
// The loops over a block's vectors are unrolled, so that the block's running values stay in registers.
#define HP_UNROLL_BLOCK _Pragma("GCC unroll 8")
constexpr int kPrefetchPixels = 64;  // how far ahead in a class plane pass 1 prefetches (into L2)
static_assert(4 * kBlockVectors * HP_VECTOR_BYTES <= kScratchBytesPerClass, "scratch too small for four blocks");
static_assert(kTile % (kBlockVectors * HP_VECTOR_BYTES / 4) == 0, "a tile must be whole blocks");

// Where level_tile reads a tile's logits and writes their gradients: here a strided slice of a level
// at the labels' size; upsample_kernel_impl.h blends two cached low-resolution rows instead.
template <typename scalar_t, typename V>
struct StridedAccess {
  const scalar_t* x;  // the tile's first logit of class 0
  int64_t xc, xw;     // strides of classes and pixels
  bool prefetch;      // prefetch the logits into L2 ahead of use
  scalar_t* g;        // the tile's first gradient, or nullptr
  int64_t gc, gw;
  bool streaming;     // store the gradients past the caches

  // Class c's logits of pixels p .. p + lanes - 1 of the tile (missing lanes are 0).
  HP_INLINE V logits(int64_t c, int64_t p, int lanes) const {
    const scalar_t* src = x + c * xc + p * xw;
    const V v = load<V>(src, xw, lanes);
    if (xw == 1 && prefetch)  // address arithmetic on integers: it may point past the logits
      __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(src) +
                                                       kPrefetchPixels * sizeof(scalar_t)),
                         0, 2);
    return v;
  }

  // Class c's gradients of the `count` pixels of a block from p0 (B vectors, one pixel per lane).
  template <int B>
  HP_INLINE void gradients(int64_t c, int64_t p0, int count, const V* grad) const {
    store<B>(g + c * gc + p0 * gw, gw, count, grad, streaming);
  }
};

// A block whose losses are done and whose gradients are still to be written (pass 3).
template <typename V>
struct PendingBlock {
  using M = typename VecTraits<V>::mask;
  M target[kBlockVectors], valid[kBlockVectors];
  V coeff[kBlockVectors], w_target[kBlockVectors];
  const V* exp_d;  // the block's exp(x - max), class by class
  const V* share;  // with sets: each class's share of its pixel's set probability (0 off sets), else nullptr
  V set_coeff[kBlockVectors];  // (1 - eps) w_set scale at set pixels
  int64_t p0;
  int count;
};

// The set pixels of one block after pass 1 (buf holds the logits): the target logit of a set pixel
// becomes log sum_c a_c exp(x_c) over its members c (score_set), its class weight the set's; with
// share, each member's share of the set's probability (else 0) is written there. One lane at a time,
// in the compute type.
template <typename V>
void score_set_lanes(const LevelArgs& a, const typename VecTraits<V>::mask* target, const V* buf, V* x_target,
                     V* w_target, V* share) {
  using S = typename VecTraits<V>::scalar;
  constexpr int B = kBlockVectors;
  constexpr int kLanes = VecTraits<V>::lanes;
  const int64_t C = a.C;
  if (share != nullptr)
    for (int64_t i = 0; i < C * B; ++i) share[i] = V{};
  for (int b = 0; b < B; ++b) {
    for (int j = 0; j < kLanes; ++j) {
      if (target[b][j] < C) continue;
      const int64_t set = target[b][j] - C;
      const auto logit = [&](int64_t c) { return static_cast<S>(buf[c * B + b][j]); };
      const auto keep_term = [&](int64_t c, S term) {
        if (share != nullptr) share[c * B + b][j] = term;
      };
      const SetScore<S> score = score_set<S>(a.sets, set, C, logit, keep_term);
      w_target[b][j] = static_cast<S>(a.sets.weights[set]);
      x_target[b][j] = score.log_sum();
      if (share == nullptr || !score.finite()) continue;
      const int32_t* members = a.sets.classes + set * C;
      for (int32_t k = 0; k < a.sets.sizes[set]; ++k)
        share[members[k] * B + b][j] = score.share_of(share[members[k] * B + b][j]);
    }
  }
}

// Pass 3 for one class of a pending block: its gradients, handed to the access.
template <typename V, typename S, typename Access>
HP_INLINE void write_gradients(const LevelArgs& a, const LevelCoefficients<S>& k, const PendingBlock<V>& blk,
                               const Access& io, int64_t c) {
  constexpr int B = kBlockVectors;
  const S wc = a.class_w ? static_cast<S>(a.class_w[c]) : S(1);
  V grad[B];
  HP_UNROLL_BLOCK
  for (int b = 0; b < B; ++b)
    grad[b] = logit_gradient(k, blk.exp_d[c * B + b], blk.coeff[b], wc, blk.valid[b],
                             blk.target[b] == static_cast<int>(c), blk.w_target[b]);
  if (blk.share != nullptr) {
    HP_UNROLL_BLOCK
    for (int b = 0; b < B; ++b) grad[b] -= blk.set_coeff[b] * blk.share[c * B + b];
  }
  io.template gradients<B>(c, blk.p0, blk.count, grad);
}

// The losses (and, with kWithGrad, the gradients) of P pixels of one level: their logits and
// gradients go through `io` (StridedAccess or a blend of rows), their raw ids are raw[0 .. P-1].
template <typename V, bool kWithGrad, typename Access>
HP_INLINE double level_tile(const KernelArgs& args, const LevelArgs& a, const Access& io, int64_t P,
                            const int32_t* raw, V* scratch, typename VecTraits<V>::scalar* loss_out) {
  using S = typename VecTraits<V>::scalar;
  using M = typename VecTraits<V>::mask;
  constexpr int B = kBlockVectors;
  constexpr int kLanes = VecTraits<V>::lanes;
  constexpr int kBlock = B * kLanes;
  const LevelCoefficients<S> k{static_cast<S>(1.0 - args.label_smoothing),
                               static_cast<S>(args.label_smoothing / static_cast<double>(a.C)),
                               static_cast<S>(a.weight_sum), static_cast<S>(a.grad_scale)};
  const bool smoothing = args.label_smoothing != 0.0;
  const int64_t C = a.C;
  V total{};
  // Pass 3 of each block runs inside pass 2 of the next, so that the gradient stores drain to
  // memory while the exponentials are computed; blocks alternate between two scratch buffers.
  PendingBlock<V> pending{};
  bool has_pending = false;

  for (int64_t p0 = 0; p0 < P; p0 += kBlock) {
    V* buf = scratch + ((p0 / kBlock) % 2) * C * B;
    const int count = static_cast<int>(P - p0 < kBlock ? P - p0 : kBlock);
    M target[B]{};  // lanes past the tile's end are ignored pixels
    bool has_sets = false;
    for (int b = 0; b < B; ++b)
      for (int j = 0; j < kLanes; ++j) {
        target[b][j] = b * kLanes + j < count ? lookup_target(raw[p0 + b * kLanes + j], a.table) : -1;
        has_sets |= target[b][j] >= C;
      }

    V m[B], x_target[B], w_target[B], sum[B], weighted_d[B];
    HP_UNROLL_BLOCK
    for (int b = 0; b < B; ++b) {
      m[b] = V{} - __builtin_inf();
      x_target[b] = w_target[b] = sum[b] = weighted_d[b] = V{};
    }
    for (int64_t c = 0; c < C; ++c) {  // pass 1
      const S wc = a.class_w ? static_cast<S>(a.class_w[c]) : S(1);
      HP_UNROLL_BLOCK
      for (int b = 0; b < B; ++b) {
        const int lanes = count - b * kLanes;
        const V v = io.logits(c, p0 + b * kLanes, lanes < 0 ? 0 : lanes < kLanes ? lanes : kLanes);
        buf[c * B + b] = v;
        m[b] = max_value(m[b], v);
        const M hit = target[b] == static_cast<int>(c);
        x_target[b] = hit ? v : x_target[b];
        if (a.class_w) w_target[b] = hit ? V{} + wc : w_target[b];
      }
    }
    if (!a.class_w)
      HP_UNROLL_BLOCK
      for (int b = 0; b < B; ++b) w_target[b] = target[b] >= 0 ? V{} + S(1) : V{};
    V* share = has_sets && kWithGrad ? scratch + (2 + (p0 / kBlock) % 2) * C * B : nullptr;
    if (has_sets) score_set_lanes<V>(a, target, buf, x_target, w_target, share);
    for (int64_t c = 0; c < C; ++c) {  // pass 2 (and pass 3 of the previous block)
      const S wc = a.class_w ? static_cast<S>(a.class_w[c]) : S(1);
      HP_UNROLL_BLOCK
      for (int b = 0; b < B; ++b) {
        const V d = buf[c * B + b] - m[b];
        const V e = exp_nonpositive(d);
        sum[b] += e;
        if (smoothing) weighted_d[b] += wc * d;
        if (kWithGrad) buf[c * B + b] = e;
      }
      if (kWithGrad && has_pending) write_gradients(a, k, pending, io, c);
    }
    V loss[B];
    HP_UNROLL_BLOCK
    for (int b = 0; b < B; ++b) {
      const M valid = target[b] >= 0;
      const V l = pixel_loss(k, log_positive(sum[b]), x_target[b] - m[b], w_target[b], weighted_d[b]);
      loss[b] = valid ? l : V{};
      total += loss[b];
      loss[b] *= k.scale;
      if (kWithGrad) {
        pending.target[b] = target[b];
        pending.valid[b] = valid;
        pending.w_target[b] = w_target[b];
        pending.coeff[b] = softmax_coefficient(k, w_target[b], S(1) / sum[b], valid);
        pending.set_coeff[b] = target[b] >= static_cast<int>(C) ? k.one_minus_eps * w_target[b] * k.scale : V{};
      }
    }
    if (loss_out != nullptr) store<B>(loss_out + p0, 1, count, loss, false);  // reduction "none"
    if (kWithGrad) {
      pending.exp_d = buf;
      pending.share = share;
      pending.p0 = p0;
      pending.count = count;
      has_pending = true;
    }
  }
  if (kWithGrad && has_pending)
    for (int64_t c = 0; c < C; ++c) write_gradients(a, k, pending, io, c);
  double tile_sum = 0;
  for (int j = 0; j < kLanes; ++j) tile_sum += static_cast<double>(total[j]);
  return tile_sum;
}

template <typename scalar_t, typename V>
void run_tile_typed(const KernelArgs& args, int64_t tile, const int32_t* raw, void* scratch) {
  using S = typename VecTraits<V>::scalar;
  const int64_t row = tile / args.tiles_per_row;  // n * H + h
  const int64_t w0 = (tile % args.tiles_per_row) * kTile;
  const int64_t P = args.W - w0 < kTile ? args.W - w0 : kTile;
  const int64_t n = row / args.H, h = row % args.H;
  for (int64_t l = 0; l < args.num_levels; ++l) {
    const LevelArgs& a = args.levels[l];
    S* loss_out = a.loss_map ? static_cast<S*>(a.loss_map) + row * args.W + w0 : nullptr;
    V* buf = static_cast<V*>(scratch);
    const StridedAccess<scalar_t, V> io{
        static_cast<const scalar_t*>(a.logits) + n * a.xs[0] + h * a.xs[2] + w0 * a.xs[3], a.xs[1], a.xs[3],
        args.prefetch_logits,
        a.grad ? static_cast<scalar_t*>(a.grad) + n * a.gs[0] + h * a.gs[2] + w0 * a.gs[3] : nullptr, a.gs[1], a.gs[3],
        args.streaming_stores};
    args.tile_sums[l * args.num_tiles + tile] = a.grad ? level_tile<V, true>(args, a, io, P, raw, buf, loss_out)
                                                       : level_tile<V, false>(args, a, io, P, raw, buf, loss_out);
  }
}

void run_tile(const KernelArgs& args, int64_t tile, const int32_t* raw, void* scratch) {
  switch (args.dtype) {
    case LogitType::Float:
      return run_tile_typed<float, VecFloat>(args, tile, raw, scratch);
    case LogitType::Half:
      return run_tile_typed<Half, VecFloat>(args, tile, raw, scratch);
    case LogitType::BFloat16:
      return run_tile_typed<BFloat16, VecFloat>(args, tile, raw, scratch);
    case LogitType::Double:
      return run_tile_typed<double, VecDouble>(args, tile, raw, scratch);
  }
}

void fence() { stream_fence(); }

}  // namespace HP_ISA
}  // namespace cpu
}  // namespace hierparse
