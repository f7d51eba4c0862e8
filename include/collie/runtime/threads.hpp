// collie::run_as_threads(): runs a function as N ranks, one thread each, over the in-process
// transport. For tests, examples and single-process experiments with real collectives.
#pragma once

#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "collie/algorithm/ring.hpp"
#include "collie/core/collective.hpp"
#include "collie/core/options.hpp"
#include "collie/runtime/enabled.hpp"
#include "collie/runtime/group.hpp"
#include "collie/transport/inprocess.hpp"

namespace collie {

/// Runs `fn(group)` on `ranks` threads; thread r gets rank r of one `Group` (backend "inproc")
/// whose algorithm is `Algorithm`. Returns when every rank has returned. If a rank throws, it is
/// marked dead, so the others fail promptly (`errc::connection_lost`) instead of waiting for it,
/// and the first exception is rethrown here.
///
///   collie::run_as_threads(4, [](collie::Group& world) {
///     std::vector<float> x(10, 1.0f);
///     world.all_sum(x);  // 4, 4, ...
///   });
template <class Algorithm = Ring, class Fn>
void run_as_threads(int ranks, Fn&& fn, Algorithm algorithm = {}, Options options = {}) {
  InProcessWorld world(ranks);
  std::mutex mutex;
  std::exception_ptr first_error;
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        Group group(Collective<InProcessTransport, Algorithm>(world.transport(r), algorithm, options),
                    "inproc");
        fn(group);
      } catch (...) {
        world.kill(r);
        std::lock_guard lock(mutex);
        if (!first_error) first_error = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace collie
