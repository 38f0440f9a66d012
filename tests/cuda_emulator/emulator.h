// Runs the CUDA kernels of csrc/cuda on the CPU, for tests on machines without a GPU.
//
// Compiled as host C++ and included before each .cu source (tests/cuda_emulator/__init__.py).
// It defines NNFF_LAUNCH (csrc/cuda/common.cuh), so a launch runs the grid's blocks and their
// warps one after another, and the 32 lanes of a warp as coroutines (ucontext) on one thread:
// each lane runs until it reaches a warp-wide operation (__shfl_xor_sync, __syncwarp), and no
// lane passes one before every live lane has reached it. A shuffle or __syncwarp with a partial
// mask, or while some lanes have returned, is undefined on a GPU: here it counts an error
// (nnff_emu::errors). Misaligned vector loads are left to UBSan's alignment check, which the
// build adds. Not emulated: the GPU memory model, fast-math rounding and shared memory (the
// kernels use none).
#pragma once

#include <cuda_runtime.h>
#include <ucontext.h>

#include <atomic>
#include <cstdio>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#define __launch_bounds__(...)  // occupancy hints of the device compiler

namespace nnff_emu {

constexpr int kWarpSize = 32;
constexpr size_t kLaneStack = 256 * 1024;

struct Warp {
  ucontext_t scheduler;
  ucontext_t lanes[kWarpSize];
  bool exited[kWarpSize] = {};
  int running = kWarpSize;
  // Double-buffered shuffles: one barrier each, not two. A lane's next shuffle writes the
  // other buffer, and the one after that starts only once every lane has read this one.
  double shuffled[2][kWarpSize];
  int phase[kWarpSize] = {};
  std::function<void()> body;
};

inline Warp* this_warp = nullptr;
inline int this_lane = 0;
inline std::atomic<long> errors{0};

inline void error(const char* what) {
  std::fprintf(stderr, "cuda emulator: %s\n", what);
  ++errors;
}

// Back to the scheduler until every live lane of the warp has arrived here.
inline void barrier(unsigned mask, const char* op) {
  if (mask != 0xffffffffu || this_warp->running != kWarpSize) error(op);
  swapcontext(&this_warp->lanes[this_lane], &this_warp->scheduler);
}

inline void run_lane() {
  this_warp->body();
  this_warp->exited[this_lane] = true;
  --this_warp->running;
}  // returns to uc_link: the scheduler

}  // namespace nnff_emu

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  static_assert(std::is_floating_point_v<T>, "the emulator shuffles float and double only");
  using namespace nnff_emu;
  int& phase = this_warp->phase[this_lane];
  double* values = this_warp->shuffled[phase];
  phase ^= 1;
  values[this_lane] = static_cast<double>(value);  // float and double are exact in double
  barrier(mask, "__shfl_xor_sync with a partial mask or exited lanes");
  return static_cast<T>(values[this_lane ^ lane_mask]);
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  nnff_emu::barrier(mask, "__syncwarp with a partial mask or exited lanes");
}

// The launchers check for launch errors; none happen here.
extern "C" inline cudaError_t cudaGetLastError() { return cudaSuccess; }

namespace nnff_emu {

// Runs one warp: round after round, each live lane runs to its next barrier or its end.
inline void run_warp(Warp& warp, unsigned block, unsigned first_thread, dim3 grid, dim3 block_dim,
                     std::vector<char>& stacks) {
  for (int lane = 0; lane < kWarpSize; ++lane) {
    getcontext(&warp.lanes[lane]);
    warp.lanes[lane].uc_stack.ss_sp = stacks.data() + lane * kLaneStack;
    warp.lanes[lane].uc_stack.ss_size = kLaneStack;
    warp.lanes[lane].uc_link = &warp.scheduler;
    makecontext(&warp.lanes[lane], run_lane, 0);
  }
  this_warp = &warp;
  blockIdx = make_uint3(block, 0, 0);
  blockDim = block_dim;
  gridDim = grid;
  while (warp.running > 0) {
    for (int lane = 0; lane < kWarpSize; ++lane) {
      if (warp.exited[lane]) continue;
      this_lane = lane;
      threadIdx = make_uint3(first_thread + lane, 0, 0);
      swapcontext(&warp.scheduler, &warp.lanes[lane]);
    }
  }
}

// A kernel launch: NNFF_LAUNCH(grid, block, stream, kernel)(args...).
template <typename... Params>
struct Launch {
  dim3 grid, block;
  void (*kernel)(Params...);

  template <typename... Args>
  void operator()(Args... args) const {
    if (grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1 || block.x % kWarpSize != 0) {
      error("only 1-D grids of whole warps are emulated");
      return;
    }
    std::vector<char> stacks(kWarpSize * kLaneStack);
    for (unsigned b = 0; b < grid.x; ++b) {
      for (unsigned w = 0; w < block.x / kWarpSize; ++w) {
        auto warp = std::make_unique<Warp>();
        warp->body = [&] { kernel(static_cast<Params>(args)...); };
        run_warp(*warp, b, w * kWarpSize, grid, block, stacks);
      }
    }
  }
};

template <typename... Params>
Launch<Params...> launch(dim3 grid, dim3 block, void (*kernel)(Params...)) {
  return {grid, block, kernel};
}

}  // namespace nnff_emu

#define NNFF_LAUNCH(grid, block, stream, ...) nnff_emu::launch(grid, block, &__VA_ARGS__)
