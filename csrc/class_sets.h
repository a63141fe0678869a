// A level's class sets as the kernels read them (multilevel_ce.h's score_set). Data only, so that the
// per-instruction-set CPU units may include it before they switch the compiler's target.
#pragma once

#include <cstdint>

namespace hierparse {

// Per set s of a level with C classes: log_rows[s * C + c] = log a_c, the log member weight of class c
// (-inf off the set); classes[s * C + k] for k < sizes[s], its members in ascending order; weights[s],
// its class weight. All nullptr when the level has no set.
struct LevelSets {
  const double* log_rows;
  const int32_t* classes;
  const int32_t* sizes;
  const double* weights;
};

}  // namespace hierparse
