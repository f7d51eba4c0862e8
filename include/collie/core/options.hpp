// Per-group settings that are not part of an algorithm: how long a wait may take and how the
// fused many-buffer all_sum batches its buffers.
#pragma once

#include <chrono>
#include <cstddef>

namespace collie {

/// Settings of a `Collective` / `Group`.
struct Options {
  /// How long any single blocking wait (one message of one step) may take before the call fails
  /// with `errc::timed_out`. The clock restarts at every wait, so a long transfer that keeps
  /// moving never times out while a silent or dead peer is reported after this long.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};

  /// The fused `all_sum_fused` packs consecutive small buffers into one message of at most this
  /// many bytes (MLX's `average_gradients` uses the same 32 MiB default).
  std::size_t fuse_bytes = std::size_t{32} << 20;
};

}  // namespace collie
