// CUDA implementation of hierparse::upsample_decode: one thread per output pixel (a grid-stride
// loop) interpolates every level's logits from their four low-resolution neighbours and decides the
// pixel with the shared decode_pixel (upsample_decode.h): in float32, and again in double where the
// float32 winner's lead is under the tolerance, so the maps equal the CPU op's.
//
// Compiled by upsample_decode_cuda.cu for the GPU and by csrc/emulate/upsample_decode.cpp for the CPU
// emulation (backend.cuh).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <type_traits>
#include <vector>

#include "common.cuh"
#include "to_device.h"
#include "upsample_decode.h"
#include "upsample_decode_host.h"

namespace hierparse {
namespace {

struct DeviceLevel {
  const void* logits;
  int64_t C, h, w;
  int64_t xs[4];
  double ratio_h, ratio_w;
};

struct DeviceArgs {
  DeviceLevel levels[kDecodeMaxLevels];
  DecodeShape shape;  // ancestors on the device
  int64_t N, H, W;
  bool align_corners;
  void* outputs[kDecodeMaxLevels];
  int output_bytes[kDecodeMaxLevels];
};

// One pixel's four source offsets and weights in one level.
struct PixelTaps {
  int64_t r0, r1, c0, c1;
  double ly, lx;
};

template <typename scalar_t>
__global__ void upsample_decode_kernel(const __grid_constant__ DeviceArgs args) {
  const int64_t total = args.N * args.H * args.W;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = p % args.W, y = p / args.W % args.H, n = p / (args.W * args.H);
    PixelTaps taps[kDecodeMaxLevels];
    for (int l = 0; l < args.shape.levels_in; ++l) {
      const DeviceLevel& a = args.levels[l];
      const DecodeTap ty = decode_tap(y, a.h, args.H, a.ratio_h, args.align_corners);
      const DecodeTap tx = decode_tap(x, a.w, args.W, a.ratio_w, args.align_corners);
      taps[l] = PixelTaps{ty.i0 * a.xs[2], ty.i1 * a.xs[2], tx.i0 * a.xs[3], tx.i1 * a.xs[3], ty.lambda, tx.lambda};
    }
    auto value = [&](auto zero, int l, int64_t c) {
      using S = decltype(zero);
      const DeviceLevel& a = args.levels[l];
      const PixelTaps& t = taps[l];
      const scalar_t* plane = static_cast<const scalar_t*>(a.logits) + n * a.xs[0] + c * a.xs[1];
      const S ly = static_cast<S>(t.ly), lx = static_cast<S>(t.lx);
      const S hy = static_cast<S>(1 - t.ly), hx = static_cast<S>(1 - t.lx);
      auto at = [&](int64_t i) { return static_cast<S>(plane[i]); };
      return hy * (hx * at(t.r0 + t.c0) + lx * at(t.r0 + t.c1)) + ly * (hx * at(t.r1 + t.c0) + lx * at(t.r1 + t.c1));
    };
    int64_t decided[kDecodeMaxLevels];
    auto exactly = [&] { decode_pixel<double>(args.shape, [&](int l, int64_t c) { return value(0.0, l, c); }, 0.0, decided); };
    if constexpr (std::is_same_v<scalar_t, double>) {
      exactly();  // as the CPU: double logits are decided in double (no float32 pass, which could overflow)
    } else if (!decode_pixel<float>(args.shape, [&](int l, int64_t c) { return value(0.0f, l, c); },
                                    static_cast<float>(kDecodeTolerance), decided)) {
      exactly();
    }
    for (int k = 0; k < args.shape.levels_out; ++k) {
      if (args.output_bytes[k] == 1) {
        static_cast<uint8_t*>(args.outputs[k])[p] = static_cast<uint8_t>(decided[k]);
      } else {
        static_cast<int64_t*>(args.outputs[k])[p] = decided[k];
      }
    }
  }
}

std::vector<at::Tensor> upsample_decode_cuda(at::TensorList logits, const at::Tensor& ancestors, at::IntArrayRef size,
                                             int64_t mode, bool align_corners,
                                             c10::optional<at::ArrayRef<double>> covered) {
  DecodePlan plan = plan_decode(logits, ancestors, size, mode, align_corners, covered);
  const KernelDeviceGuard guard(logits[0].device());
  const int64_t total = plan.N * plan.H * plan.W;
  if (total == 0) return plan.outputs;
  // the ancestor table is small; this copy is the op's only host-to-device transfer, from pinned
  // memory and asynchronous, so the host does not wait for the stream
  const at::Tensor device_ancestors = to_device(plan.ancestors, logits[0].device());
  DeviceArgs args{};
  args.shape = plan.shape;
  args.shape.ancestors = device_ancestors.data_ptr<int64_t>();
  args.N = plan.N;
  args.H = plan.H;
  args.W = plan.W;
  args.align_corners = align_corners;
  for (size_t l = 0; l < plan.levels.size(); ++l) {
    const at::Tensor& x = logits[l];
    const double cover_h = covered ? (*covered)[0] : 0.0, cover_w = covered ? (*covered)[1] : 0.0;
    args.levels[l] = DeviceLevel{
        x.data_ptr(), x.size(1), x.size(2), x.size(3), {x.stride(0), x.stride(1), x.stride(2), x.stride(3)},
        decode_ratio(x.size(2), plan.H, align_corners, cover_h), decode_ratio(x.size(3), plan.W, align_corners, cover_w)};
  }
  for (size_t k = 0; k < plan.outputs.size(); ++k) {
    args.outputs[k] = plan.outputs[k].data_ptr();
    args.output_bytes[k] = static_cast<int>(plan.outputs[k].element_size());
  }
  HP_DISPATCH_LOGIT_TYPES(logits[0].scalar_type(), "hierparse_upsample_decode", [&] {
    const auto kernel = upsample_decode_kernel<scalar_t>;
    const int64_t blocks = grid_size(kernel, total, 0);
    launch_kernel(kernel, blocks, kThreads, 0, args);
  });
  return plan.outputs;
}

}  // namespace

HP_REGISTER_CUDA_KERNELS(m) {
  m.impl("upsample_decode", &upsample_decode_cuda);
}

}  // namespace hierparse
