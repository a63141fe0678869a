// Checks the scalar instantiations of csrc/multilevel_ce.h (the ones the CUDA kernel runs) against
// double-precision libm and against the CPU's vector instantiations, lane by lane and bit by bit.
// Built and run by tests/test_pixel_math.py; prints one JSON object.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "multilevel_ce.h"

typedef float Vec4 __attribute__((vector_size(16)));
typedef uint32_t Bits4 __attribute__((vector_size(16)));
template <>
struct hierparse::BitsOf<Vec4> {
  using type = Bits4;
};

static double ulps(float got, double want) {
  const float w = static_cast<float>(want);
  const double ulp = std::nextafter(w, std::numeric_limits<float>::infinity()) - w;
  return std::fabs(static_cast<double>(got) - want) / ulp;
}

static bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(a)) == 0; }

template <typename Scalar, typename Vector>
static long vector_mismatches(const std::vector<float>& xs, Scalar scalar, Vector vector) {
  long mismatches = 0;
  for (size_t i = 0; i + 4 <= xs.size(); i += 4) {
    const Vec4 v = vector(Vec4{xs[i], xs[i + 1], xs[i + 2], xs[i + 3]});
    for (int j = 0; j < 4; ++j) mismatches += !same_bits(v[j], scalar(xs[i + j]));
  }
  return mismatches;
}

int main() {
  using hierparse::exp_nonpositive;
  using hierparse::log_positive;
  std::vector<float> exp_inputs, log_inputs;
  for (int i = 0; i <= 2000000; ++i) exp_inputs.push_back(-87.0f * static_cast<float>(i) / 2000000.0f);
  for (int i = 0; i <= 2000000; ++i) log_inputs.push_back(1.0f + 1000.0f * static_cast<float>(i) / 2000000.0f);
  for (float x = 1.0f; x < 3.0e6f; x *= 1.0001f) log_inputs.push_back(x);

  double exp_max_ulps = 0, log_max_ulps = 0;
  for (float x : exp_inputs) exp_max_ulps = std::fmax(exp_max_ulps, ulps(exp_nonpositive(x), std::exp(double(x))));
  for (float x : log_inputs) log_max_ulps = std::fmax(log_max_ulps, ulps(log_positive(x), std::log(double(x))));

  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const bool specials_ok = exp_nonpositive(-inf) == 0.0f && exp_nonpositive(-87.5f) == 0.0f &&
                           exp_nonpositive(-1e30f) == 0.0f && exp_nonpositive(0.0f) == 1.0f &&
                           std::isnan(exp_nonpositive(nan)) && log_positive(1.0f) == 0.0f &&
                           std::isnan(log_positive(nan));

  std::vector<float> mixed = exp_inputs;
  for (float x : {-inf, nan, -87.5f, -1e30f, 0.0f, -0.0f}) mixed.push_back(x);
  while (mixed.size() % 4) mixed.push_back(0.0f);
  std::vector<float> mixed_log = log_inputs;
  mixed_log.push_back(nan);
  while (mixed_log.size() % 4) mixed_log.push_back(1.0f);
  const long mismatches =
      vector_mismatches(mixed, [](float x) { return exp_nonpositive(x); },
                        [](Vec4 v) { return exp_nonpositive(v); }) +
      vector_mismatches(mixed_log, [](float x) { return log_positive(x); }, [](Vec4 v) { return log_positive(v); });

  std::printf("{\"exp_max_ulps\": %.3f, \"log_max_ulps\": %.3f, \"specials_ok\": %s, \"vector_mismatches\": %ld, "
              "\"values\": %zu}\n",
              exp_max_ulps, log_max_ulps, specials_ok ? "true" : "false", mismatches,
              mixed.size() + mixed_log.size());
  return 0;
}
