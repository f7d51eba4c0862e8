// PairCore<Transport, Algorithm>: the byte-level core of the typed `Collective<T, A>`. It owns one
// transport and one algorithm, composes what the algorithm leaves out, and runs every operation
// on bytes with a type-erased `Reduction`: this is the only code compiled per (transport,
// algorithm) pair, and it is compiled once per pair, not once per element type or op.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"
#include "collie/core/detail/core_state.hpp"
#include "collie/core/detail/direct.hpp"
#include "collie/core/detail/make_reduction.hpp"
#include "collie/core/detail/requests.hpp"
#include "collie/core/detail/worker.hpp"
#include "collie/core/error.hpp"
#include "collie/core/ops.hpp"
#include "collie/core/options.hpp"
// The typed path compiles its pair in the program anyway: its custom ops too, in both modes.
#include "collie/core/reduce.hpp"
#include "collie/core/request.hpp"

namespace collie::detail {

// Mixes a parent group's context with a split counter and a colour into the context of a
// subgroup (splitmix64 finaliser): every member computes the same value, other subgroups get
// different ones, so their messages never match.
inline std::uint64_t mix_context(std::uint64_t parent, std::uint64_t counter, std::int64_t color) {
  std::uint64_t x = parent ^ (counter * 0x9E3779B97F4A7C15ULL) ^
                    (static_cast<std::uint64_t>(color) * 0xC2B2AE3D27D4EB4FULL);
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x | 1;  // never 0, the context of a world group
}

template <class T, class A>
  requires Transport<T> && AlgorithmFor<A, T>
class PairCore {
 public:
  using transport_type = T;
  using algorithm_type = A;
  using Bytes = std::span<const std::byte>;
  using MutableBytes = std::span<std::byte>;

  explicit PairCore(T transport, A algorithm = A{}, Options options = {})
      : state_(std::make_unique<State>(std::move(transport), std::move(algorithm), options, 0)) {}

  PairCore(PairCore&&) noexcept = default;
  PairCore& operator=(PairCore&&) noexcept = default;

  /// "transport/algorithm", e.g. "tcp/ring".
  static std::string policy_name() {
    return concat({T::name, "/", A::name});
  }

  int rank() const noexcept { return state_->rank; }
  int size() const noexcept { return state_->size; }
  const std::string& name() const noexcept { return state_->name; }
  const Options& options() const noexcept { return state_->options; }
  T& transport() noexcept { return state_->transport; }
  const A& algorithm() const noexcept { return state_->algorithm; }
  FuseSpace& fuse_space() noexcept { return state_->fuse; }

  // ----- synchronous operations, on the caller's thread ---------------------------------------

  std::error_code all_reduce(Bytes in, MutableBytes out, const Reduction& reduction) noexcept {
    State& s = *state_;
    return reduce_job(s, in, out, reduction, s.next_collective_tag(), s.caller);
  }
  std::error_code reduce_scatter(Bytes in, MutableBytes out, const Reduction& reduction) noexcept {
    State& s = *state_;
    return scatter_job(s, in, out, reduction, s.next_collective_tag(), s.caller);
  }
  std::error_code all_gather(Bytes in, MutableBytes out) noexcept {
    State& s = *state_;
    return gather_job(s, in, out, s.next_collective_tag(), s.caller);
  }
  std::error_code broadcast(MutableBytes data, int root) noexcept {
    State& s = *state_;
    return broadcast_job(s, data, root, s.next_collective_tag(), s.caller);
  }
  std::error_code all_to_all(Bytes in, MutableBytes out) noexcept {
    State& s = *state_;
    return all_to_all_job(s, in, out, s.next_collective_tag(), s.caller);
  }
  std::error_code barrier() noexcept {
    State& s = *state_;
    return barrier_job(s, s.next_collective_tag(), s.caller);
  }
  std::error_code send(Bytes data, int dst) noexcept {
    State& s = *state_;
    return p2p_job(s, true, data, {}, dst, s.next_send_tag(dst));
  }
  std::error_code recv(MutableBytes data, int src) noexcept {
    State& s = *state_;
    return p2p_job(s, false, {}, data, src, s.next_recv_tag(src));
  }

  // ----- asynchronous operations --------------------------------------------------------------
  // Collectives are queued for the group's worker thread, in call order; the tag is taken here,
  // on the caller's thread, so every rank gives the same call the same tags.

  Request all_reduce_async(Bytes in, MutableBytes out, const Reduction& reduction,
                           std::shared_ptr<const void> keep_alive) {
    return start(&run_all_reduce, in, out, 0, reduction, std::move(keep_alive));
  }
  Request reduce_scatter_async(Bytes in, MutableBytes out, const Reduction& reduction,
                               std::shared_ptr<const void> keep_alive) {
    return start(&run_reduce_scatter, in, out, 0, reduction, std::move(keep_alive));
  }
  Request all_gather_async(Bytes in, MutableBytes out) {
    return start(&run_all_gather, in, out, 0, {}, nullptr);
  }
  Request broadcast_async(MutableBytes data, int root) {
    return start(&run_broadcast, data, data, root, {}, nullptr);
  }
  Request all_to_all_async(Bytes in, MutableBytes out) {
    return start(&run_all_to_all, in, out, 0, {}, nullptr);
  }
  Request barrier_async() { return start(&run_barrier, {}, {}, 0, {}, nullptr); }

  // Sends and receives are posted to the transport here, on the caller's thread, not queued for
  // the worker. Queued, a receive would hold back the sends started after it: ranks that each
  // post their receives, then their sends, then wait (MPI_Irecv, MPI_Isend, MPI_Waitall) would
  // all wait in their first receive for a send never posted. The Request completes it on the
  // thread that waits, with no hand-off.
  Request send_async(Bytes data, int dst) {
    State& s = *state_;
    return post_p2p(true, data, {}, dst, s.next_send_tag(dst));
  }
  Request recv_async(MutableBytes data, int src) {
    State& s = *state_;
    return post_p2p(false, {}, data, src, s.next_recv_tag(src));
  }

  // ----- groups -------------------------------------------------------------------------------

  // MPI_Comm_split: one all-gather of (color, key), then the transport's own split.
  std::optional<PairCore> split(int color, int key, std::error_code& ec) noexcept {
    State& s = *state_;
    const int p = s.size;
    const std::array<std::int32_t, 2> mine{color, key < 0 ? s.rank : key};
    std::optional<PairCore> result;
    ec = run_call(s, "split", s.next_collective_tag(), s.caller, [&](Call& call) -> std::error_code {
      const auto all = call.array<std::int32_t>(2 * static_cast<std::size_t>(p));
      const auto in = std::as_bytes(std::span(mine));
      const auto out = std::as_writable_bytes(all);
      if (p == 1) {
        std::memcpy(out.data(), in.data(), in.size());
      } else if (auto failed = algo_all_gather(s, call, in, out)) {
        return failed;
      }
      std::vector<int> members;
      for (int k = 0; k < p; ++k) {
        if (all[2 * static_cast<std::size_t>(k)] == color) members.push_back(k);
      }
      std::stable_sort(members.begin(), members.end(), [&](int a, int b) {
        return all[2 * static_cast<std::size_t>(a) + 1] < all[2 * static_cast<std::size_t>(b) + 1];
      });
      const std::uint64_t context = mix_context(s.context, ++s.split_count, color);
      result.emplace(PairCore(s.transport.split(members, context), s.algorithm, s.options, context));
      return {};
    });
    if (ec) result.reset();
    return result;
  }

 private:
  struct State : CoreState {
    State(T t, A a, Options o, std::uint64_t ctx)
        : CoreState(policy_name(), t.rank(), t.size(), o, ctx), transport(std::move(t)),
          algorithm(std::move(a)) {
      hooks.transport = &transport;
      hooks.describe_peer = [](const void* t, int peer) {
        return std::string(static_cast<const T*>(t)->describe_peer(peer));
      };
      if constexpr (requires(const T& ct) { ct.failure_reason(0); }) {
        hooks.failure_reason = [](const void* t, int peer) {
          return std::string(static_cast<const T*>(t)->failure_reason(peer));
        };
      }
      hooks.abort = [](void* t, std::string_view reason) noexcept {
        static_cast<T*>(t)->abort(reason);
      };
    }

    T transport;
    A algorithm;
    // After `transport`: destroyed before it, waiting for what is still posted there.
    PostedRequests posted;
    // Declared last: destroyed first, so queued jobs finish while the rest is still alive.
    std::unique_ptr<Worker> worker;
  };

  PairCore(T transport, A algorithm, Options options, std::uint64_t context)
      : state_(std::make_unique<State>(std::move(transport), std::move(algorithm), options,
                                       context)) {}

  // ----- the algorithm, completed where it leaves something out --------------------------------

  static std::error_code algo_all_reduce(State& s, Call& call, MutableBytes data,
                                         const Reduction& reduction, Scratch& compose) {
    if constexpr (HasAllReduce<A, T>) {
      (void)compose;
      return s.algorithm.all_reduce(s.transport, call, data, reduction);
    } else {
      // reduce-scatter + all-gather over a copy padded to a multiple of p elements (the padding
      // is zeroed, reduced like the rest, and dropped).
      const auto p = static_cast<std::size_t>(s.size);
      const std::size_t es = reduction.element_size;
      const std::size_t block = (data.size() / es + p - 1) / p * es;
      auto buffer = compose.get(block * p + block);
      auto whole = buffer.first(block * p);
      auto own = buffer.subspan(block * p, block);
      std::memcpy(whole.data(), data.data(), data.size());
      std::memset(whole.data() + data.size(), 0, whole.size() - data.size());
      if (auto ec = s.algorithm.reduce_scatter(s.transport, call, whole, own, reduction)) return ec;
      call.next_phase();
      if (auto ec = algo_all_gather(s, call, own, whole)) return ec;
      std::memcpy(data.data(), whole.data(), data.size());
      return {};
    }
  }

  static std::error_code algo_reduce_scatter(State& s, Call& call, Bytes in, MutableBytes out,
                                             const Reduction& reduction, Scratch& compose) {
    if constexpr (HasReduceScatter<A, T>) {
      (void)compose;
      return s.algorithm.reduce_scatter(s.transport, call, in, out, reduction);
    } else {
      // all-reduce of a copy, keep this rank's block.
      auto copy = compose.get(in.size());
      std::memcpy(copy.data(), in.data(), in.size());
      if (auto ec = s.algorithm.all_reduce(s.transport, call, copy, reduction)) return ec;
      std::memcpy(out.data(), copy.data() + static_cast<std::size_t>(s.rank) * out.size(),
                  out.size());
      return {};
    }
  }

  static std::error_code algo_all_gather(State& s, Call& call, Bytes in, MutableBytes out) {
    if constexpr (HasAllGather<A, T>) {
      return s.algorithm.all_gather(s.transport, call, in, out);
    } else {
      return direct_all_gather(s.transport, call, in, out);
    }
  }

  // ----- jobs: run on the caller's thread or the worker ---------------------------------------

  static std::error_code reduce_job(State& s, Bytes in, MutableBytes out,
                                    const Reduction& reduction, Tag tag, Lane& lane) noexcept {
    return run_call(s, "all_reduce", tag, lane, [&](Call& call) -> std::error_code {
      if (!in.empty() && in.data() != out.data()) std::memcpy(out.data(), in.data(), in.size());
      if (s.size == 1 || out.empty()) return {};
      return algo_all_reduce(s, call, out, reduction, lane.compose);
    });
  }

  static std::error_code scatter_job(State& s, Bytes in, MutableBytes out,
                                     const Reduction& reduction, Tag tag, Lane& lane) noexcept {
    return run_call(s, "reduce_scatter", tag, lane, [&](Call& call) -> std::error_code {
      if (s.size == 1 || out.empty()) {
        if (!in.empty() && in.data() != out.data()) std::memcpy(out.data(), in.data(), in.size());
        return {};
      }
      return algo_reduce_scatter(s, call, in, out, reduction, lane.compose);
    });
  }

  static std::error_code gather_job(State& s, Bytes in, MutableBytes out, Tag tag,
                                    Lane& lane) noexcept {
    return run_call(s, "all_gather", tag, lane, [&](Call& call) -> std::error_code {
      if (s.size == 1 || in.empty()) {
        if (!in.empty() && in.data() != out.data()) std::memmove(out.data(), in.data(), in.size());
        return {};
      }
      return algo_all_gather(s, call, in, out);
    });
  }

  static std::error_code broadcast_job(State& s, MutableBytes data, int root, Tag tag,
                                       Lane& lane) noexcept {
    return run_call(s, "broadcast", tag, lane, [&](Call& call) -> std::error_code {
      if (s.size == 1 || data.empty()) return {};
      if constexpr (HasBroadcast<A, T>) {
        return s.algorithm.broadcast(s.transport, call, data, root);
      } else {
        return direct_broadcast(s.transport, call, data, root);
      }
    });
  }

  static std::error_code all_to_all_job(State& s, Bytes in, MutableBytes out, Tag tag,
                                        Lane& lane) noexcept {
    return run_call(s, "all_to_all", tag, lane, [&](Call& call) -> std::error_code {
      if (s.size == 1 || in.empty()) {
        if (!in.empty() && in.data() != out.data()) std::memcpy(out.data(), in.data(), in.size());
        return {};
      }
      if constexpr (HasAllToAll<A, T>) {
        return s.algorithm.all_to_all(s.transport, call, in, out);
      } else {
        return direct_all_to_all(s.transport, call, in, out);
      }
    });
  }

  // A 1-byte all-reduce: nobody's reduction finishes before everyone has contributed.
  static std::error_code barrier_job(State& s, Tag tag, Lane& lane) noexcept {
    return run_call(s, "barrier", tag, lane, [&](Call& call) -> std::error_code {
      if (s.size == 1) return {};
      std::uint8_t token = 1;
      static constexpr Max op{};
      const Reduction reduction = make_reduction<std::uint8_t>(op);
      return algo_all_reduce(s, call, std::as_writable_bytes(std::span(&token, 1)), reduction,
                             lane.compose);
    });
  }

  // A send of `out` when `sending`, a receive into `in` otherwise.
  static std::error_code p2p_job(State& s, bool sending, Bytes out, MutableBytes in, int peer,
                                 Tag tag) noexcept {
    return run_call(s, sending ? "send" : "recv", tag, s.caller, [&](Call& call) -> std::error_code {
      Requests<T> requests(s.transport, call);
      if (sending) {
        requests.send(peer, tag, out, "send");
      } else {
        requests.recv(peer, tag, in, "recv");
      }
      return requests.wait_all();
    });
  }

  // ----- the asynchronous collectives, as the worker runs them --------------------------------

  static std::error_code run_all_reduce(void* group, AsyncJob& job) noexcept {
    auto& s = *static_cast<State*>(group);
    return reduce_job(s, job.in, job.out, job.reduction, job.tag, s.background);
  }
  static std::error_code run_reduce_scatter(void* group, AsyncJob& job) noexcept {
    auto& s = *static_cast<State*>(group);
    return scatter_job(s, job.in, job.out, job.reduction, job.tag, s.background);
  }
  static std::error_code run_all_gather(void* group, AsyncJob& job) noexcept {
    auto& s = *static_cast<State*>(group);
    return gather_job(s, job.in, job.out, job.tag, s.background);
  }
  static std::error_code run_broadcast(void* group, AsyncJob& job) noexcept {
    auto& s = *static_cast<State*>(group);
    return broadcast_job(s, job.out, job.root, job.tag, s.background);
  }
  static std::error_code run_all_to_all(void* group, AsyncJob& job) noexcept {
    auto& s = *static_cast<State*>(group);
    return all_to_all_job(s, job.in, job.out, job.tag, s.background);
  }
  static std::error_code run_barrier(void* group, AsyncJob& job) noexcept {
    auto& s = *static_cast<State*>(group);
    return barrier_job(s, job.tag, s.background);
  }

  Request start(AsyncJob::RunFn run, Bytes in, MutableBytes out, int root,
                const Reduction& reduction, std::shared_ptr<const void> keep_alive) {
    State& s = *state_;
    auto job = std::make_shared<AsyncJob>();
    job->run = run;
    job->in = in;
    job->out = out;
    job->root = root;
    job->reduction = reduction;
    job->keep_alive = std::move(keep_alive);
    if (!s.worker) s.worker = std::make_unique<Worker>(&s);
    job->tag = s.next_collective_tag();
    s.worker->submit(job);
    return Request(std::move(job));
  }

  // A send or receive posted by post_p2p: its completion state, with the transport's request.
  struct PostedP2p : RequestState {
    State* state = nullptr;
    typename T::Request posted;
    bool sending = false;
    int peer = 0;
    Tag tag = 0;
  };

  Request post_p2p(bool sending, Bytes out, MutableBytes in, int peer, Tag tag) {
    State& s = *state_;
    auto record = std::make_shared<PostedP2p>();
    const std::string_view what = sending ? "send" : "recv";
    if (auto ec = s.refuse_if_aborted(what)) {
      record->finish(ec, last_error_message);
      return Request(std::move(record));
    }
    record->state = &s;
    record->sending = sending;
    record->peer = peer;
    record->tag = tag;
    record->posted = sending ? s.transport.post_send(peer, tag, out) : s.transport.post_recv(peer, tag, in);
    record->drive_fn = &drive_p2p;
    s.posted.add(record);
    return Request(std::move(record));
  }

  // Waits for (`block`) or looks at an operation posted by post_p2p, and finishes it once it is
  // over, failing as a synchronous send or receive would.
  static void drive_p2p(RequestState& base, bool block) noexcept {
    auto& r = static_cast<PostedP2p&>(base);
    State& s = *r.state;
    const std::string_view what = r.sending ? "send" : "recv";
    Scratch unused;
    Call call(r.tag, s.options.timeout, unused, nullptr);
    call.at(what, 0, 0, r.peer);
    const Deadline deadline = block ? call.deadline() : Deadline::after(std::chrono::seconds(0));
    const std::error_code ec = s.transport.wait(r.posted, deadline);
    if (!block && ec == errc::timed_out) return;  // still under way
    if (ec == errc::timed_out) s.transport.cancel(r.posted);
    std::string message;
    if (ec) {
      CoreState::Failure failure{&s, what, {}};
      s.conclude(failure, call, ec);
      try {
        message = last_error_message;
      } catch (...) {
      }
    }
    r.finish(ec, std::move(message));
  }

  std::unique_ptr<State> state_;
};

}  // namespace collie::detail
