// collie::StoreOptions: how a rank meets the others at a collie::Store (runtime/store.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace collie {

/// How a rank meets the others at a store. Every rank of a job uses the same `job_token`.
struct StoreOptions {
  /// Shared by the ranks of one job; a process with another token is refused (and told why),
  /// and the coordinator keeps waiting for the right one.
  std::uint64_t job_token = 0;
  /// How long a rank keeps retrying to reach the coordinator (backoff from 50 ms, doubling to
  /// 1 s): ranks start in any order.
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(60)};
  /// How long any single send or receive may take.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  /// Log each step to stderr, prefixed "[collie <label>]".
  bool verbose = false;
  /// What the store is for, in messages and logs ("rendezvous", "jaccl coordinator", ...).
  std::string label = "store";
};

}  // namespace collie
