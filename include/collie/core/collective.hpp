// Collective<Transport, Algorithm>: the compile-time face of collie. It owns one transport and one
// algorithm and gives the whole operation set, composing what the algorithm leaves out.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "collie/algorithm/detail/direct.hpp"
#include "collie/algorithm/detail/requests.hpp"
#include "collie/core/buffer.hpp"
#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"
#include "collie/core/detail/make_reduction.hpp"
#include "collie/core/detail/worker.hpp"
#include "collie/core/element.hpp"
#include "collie/core/error.hpp"
#include "collie/core/ops.hpp"
#include "collie/core/options.hpp"
#include "collie/core/request.hpp"

namespace collie {

namespace detail {

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

// A range of buffers for the fused all_sum: std::vector<std::span<float>>,
// std::vector<std::vector<float>>, ...
template <class R>
concept BufferList = std::ranges::input_range<R> && MutableBuffer<std::ranges::range_reference_t<R>>;

}  // namespace detail

/// The typed collective object: `Collective<Transport, Algorithm>`.
///
/// It is what `collie::init()` builds behind a `collie::Group`, and what performance-minded users
/// instantiate directly to pay for nothing else:
///
///   collie::InProcessWorld world(4);
///   // on the thread of rank r:
///   collie::Collective<collie::InProcessTransport, collie::Ring> c{world.transport(r)};
///   std::vector<float> x(10, 1.0f);
///   c.all_sum(x);  // every element == 4
///
/// Operations. Every buffer is any contiguous sized range of a supported element type
/// (`std::vector`, `std::array`, `std::span`, C arrays). Each operation comes in-place and
/// out-of-place (`in`, `out`; `in` and `out` may be the very same buffer, never partially
/// overlapping), and in two error forms: the plain one throws `collie::Error`, the one taking a
/// `std::error_code&` never throws. Every rank must call the same collectives, in the same order,
/// with the same sizes.
///
/// Errors. Mistakes checked locally (sizes that do not fit, a peer out of range) are reported
/// before any byte moves and leave the group usable. An I/O failure (timeout, lost peer, protocol
/// error) aborts the group for good: every later call fails at once with `errc::aborted`.
///
/// Threads. A Collective is used from one thread at a time. The asynchronous collectives run on a
/// worker thread owned by the Collective, one after another in the order they were started,
/// while synchronous calls may run at the same time on the caller's thread. `send_async` and
/// `recv_async` are posted to the transport at once and complete on the thread that waits.
///
/// A group of one rank makes every collective an identity (no copy in place) and send/recv an
/// error (`errc::singleton_group`), as in MLX.
template <class T, class A>
  requires Transport<T> && AlgorithmFor<A, T>
class Collective {
 public:
  using transport_type = T;
  using algorithm_type = A;

  /// Takes ownership of a connected transport. `algorithm` carries the algorithm's tuning
  /// (segment sizes, ring counts); `options` the timeouts and fusion threshold.
  explicit Collective(T transport, A algorithm = A{}, Options options = {})
      : state_(std::make_unique<State>(std::move(transport), std::move(algorithm), options, 0)) {}

  Collective(Collective&&) noexcept = default;
  Collective& operator=(Collective&&) noexcept = default;

  /// This rank, in [0, size()).
  int rank() const noexcept { return state_->transport.rank(); }
  /// The number of ranks in the group.
  int size() const noexcept { return state_->transport.size(); }
  /// "transport/algorithm", e.g. "inproc/ring"; used in every error message.
  static std::string name() { return std::string(T::name) + "/" + std::string(A::name); }

  T& transport() noexcept { return state_->transport; }
  const A& algorithm() const noexcept { return state_->algorithm; }
  const Options& options() const noexcept { return state_->options; }

  /// The full message of the most recent failed call made on this thread (for users of the
  /// `std::error_code&` forms).
  static const std::string& last_error() noexcept { return detail::last_error_message; }

  // ---------------------------------------------------------------------------------------------
  // Reductions: all_sum, all_prod, all_max, all_min, all_reduce(op)
  //
  // Every rank ends with the element-wise reduction over all ranks. Cost with the Ring algorithm:
  // 2(p-1) steps and 2(p-1)/p·S bytes sent per rank for S bytes; with Mesh, one round below its
  // small-message threshold. Out of place, `in` and `out` must have the same size.
  // ---------------------------------------------------------------------------------------------

#define COLLIE_DETAIL_NAMED_REDUCTION(NAME, OP)                                                \
  template <MutableBuffer R>                                                                    \
  void NAME(R&& data) {                                                                         \
    all_reduce(data, OP{});                                                                     \
  }                                                                                             \
  template <MutableBuffer R>                                                                    \
  void NAME(R&& data, std::error_code& ec) noexcept {                                           \
    all_reduce(data, OP{}, ec);                                                                 \
  }                                                                                             \
  template <Buffer In, MutableBuffer Out>                                                       \
    requires std::same_as<element_t<In>, element_t<Out>>                                        \
  void NAME(const In& in, Out&& out) {                                                          \
    all_reduce(in, out, OP{});                                                                  \
  }                                                                                             \
  template <Buffer In, MutableBuffer Out>                                                       \
    requires std::same_as<element_t<In>, element_t<Out>>                                        \
  void NAME(const In& in, Out&& out, std::error_code& ec) noexcept {                            \
    all_reduce(in, out, OP{}, ec);                                                              \
  }                                                                                             \
  template <MutableBuffer R>                                                                    \
  Request NAME##_async(R&& data) {                                                              \
    return all_reduce_async(data, OP{});                                                        \
  }

  /// Element-wise sum over all ranks (bool: logical or).
  COLLIE_DETAIL_NAMED_REDUCTION(all_sum, Sum)
  /// Element-wise product over all ranks (bool: logical and).
  COLLIE_DETAIL_NAMED_REDUCTION(all_prod, Prod)
  /// Element-wise maximum over all ranks (NaN propagates; complex: lexicographic).
  COLLIE_DETAIL_NAMED_REDUCTION(all_max, Max)
  /// Element-wise minimum over all ranks (NaN propagates; complex: lexicographic).
  COLLIE_DETAIL_NAMED_REDUCTION(all_min, Min)
#undef COLLIE_DETAIL_NAMED_REDUCTION

  /// All-reduce with any collie op or user functor `op(a, b) -> T`, which must be associative
  /// and commutative (algorithms combine contributions in different orders) and must not throw.
  template <MutableBuffer R, class Op>
    requires ReduceOp<Op, element_t<R>>
  void all_reduce(R&& data, Op op) {
    auto view = detail::mutable_view(data);
    raise(reduce_now(std::span<const element_t<R>>(view), view, op));
  }
  template <MutableBuffer R, class Op>
    requires ReduceOp<Op, element_t<R>>
  void all_reduce(R&& data, Op op, std::error_code& ec) noexcept {
    auto view = detail::mutable_view(data);
    ec = guard([&] { return reduce_now(std::span<const element_t<R>>(view), view, op); });
  }
  template <Buffer In, MutableBuffer Out, class Op>
    requires std::same_as<element_t<In>, element_t<Out>> && ReduceOp<Op, element_t<In>>
  void all_reduce(const In& in, Out&& out, Op op) {
    raise(reduce_now(detail::const_view(in), detail::mutable_view(out), op));
  }
  template <Buffer In, MutableBuffer Out, class Op>
    requires std::same_as<element_t<In>, element_t<Out>> && ReduceOp<Op, element_t<In>>
  void all_reduce(const In& in, Out&& out, Op op, std::error_code& ec) noexcept {
    ec = guard([&] { return reduce_now(detail::const_view(in), detail::mutable_view(out), op); });
  }
  /// Asynchronous in-place all-reduce; see `collie::Request`.
  template <MutableBuffer R, class Op>
    requires ReduceOp<Op, element_t<R>>
  Request all_reduce_async(R&& data, Op op) {
    using E = element_t<R>;
    auto view = detail::mutable_view(data);
    if (auto ec = check_reduce<E>(view, view, "all_reduce")) return finished(ec);
    const Tag tag = next_collective_tag();
    return submit([view, op, tag](State& s, Lane& lane) {
      return reduce_job<E>(s, view, view, op, tag, lane);
    });
  }

  /// Fused all_sum of many buffers (MLX's `average_gradients`): consecutive buffers are packed
  /// into one message of at most `options().fuse_bytes` bytes (default 32 MiB), summed, and
  /// unpacked, so a model with thousands of small gradients pays a handful of round trips
  /// instead of thousands. A buffer larger than the threshold is summed alone, in place.
  /// `buffers` is any range of buffers of one element type, e.g. std::vector<std::span<float>>.
  template <detail::BufferList R>
  void all_sum_fused(R&& buffers) {
    raise(fused_now(buffers));
  }
  template <detail::BufferList R>
  void all_sum_fused(R&& buffers, std::error_code& ec) noexcept {
    ec = guard([&] { return fused_now(buffers); });
  }

  // ---------------------------------------------------------------------------------------------
  // Data movement
  // ---------------------------------------------------------------------------------------------

  /// All-gather: `out.size() == in.size() * size()`; block k of `out` is rank k's `in`
  /// (rank-major). Ring: p-1 steps, (p-1)·S_in bytes sent per rank.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_gather(const In& in, Out&& out) {
    raise(gather_now(detail::const_view(in), detail::mutable_view(out)));
  }
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_gather(const In& in, Out&& out, std::error_code& ec) noexcept {
    ec = guard([&] { return gather_now(detail::const_view(in), detail::mutable_view(out)); });
  }
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  Request all_gather_async(const In& in, Out&& out) {
    using E = element_t<In>;
    const auto i = detail::bytes_of(detail::const_view(in));
    const auto o = detail::bytes_of(detail::mutable_view(out));
    if (auto ec = check_gather(i, o, sizeof(E))) return finished(ec);
    const Tag tag = next_collective_tag();
    return submit(
        [i, o, tag](State& s, Lane& lane) { return gather_job(s, i, o, tag, lane); });
  }

  /// Reduce-scatter with sum (MLX's `sum_scatter`): `in.size() == out.size() * size()`; rank k
  /// receives the sum over all ranks of block k of `in`. Ring: p-1 steps, (p-1)/p·S_in bytes.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void sum_scatter(const In& in, Out&& out) {
    reduce_scatter(in, out, Sum{});
  }
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void sum_scatter(const In& in, Out&& out, std::error_code& ec) noexcept {
    reduce_scatter(in, out, Sum{}, ec);
  }
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  Request sum_scatter_async(const In& in, Out&& out) {
    using E = element_t<In>;
    const auto i = detail::const_view(in);
    const auto o = detail::mutable_view(out);
    if (auto ec = check_scatter<E>(i, o)) return finished(ec);
    const Tag tag = next_collective_tag();
    return submit([i, o, tag](State& s, Lane& lane) {
      return scatter_job<E>(s, i, o, Sum{}, tag, lane);
    });
  }

  /// Reduce-scatter with any op: as `sum_scatter`.
  template <Buffer In, MutableBuffer Out, class Op>
    requires std::same_as<element_t<In>, element_t<Out>> && ReduceOp<Op, element_t<In>>
  void reduce_scatter(const In& in, Out&& out, Op op) {
    raise(scatter_now(detail::const_view(in), detail::mutable_view(out), op));
  }
  template <Buffer In, MutableBuffer Out, class Op>
    requires std::same_as<element_t<In>, element_t<Out>> && ReduceOp<Op, element_t<In>>
  void reduce_scatter(const In& in, Out&& out, Op op, std::error_code& ec) noexcept {
    ec = guard([&] { return scatter_now(detail::const_view(in), detail::mutable_view(out), op); });
  }

  /// Broadcast: every rank ends with `root`'s `data`. Ring: a pipelined chain; Mesh: the root
  /// sends to everyone at once.
  template <MutableBuffer R>
  void broadcast(R&& data, int root) {
    raise(broadcast_now(detail::bytes_of(detail::mutable_view(data)), root));
  }
  template <MutableBuffer R>
  void broadcast(R&& data, int root, std::error_code& ec) noexcept {
    ec = guard([&] { return broadcast_now(detail::bytes_of(detail::mutable_view(data)), root); });
  }
  template <MutableBuffer R>
  Request broadcast_async(R&& data, int root) {
    const auto d = detail::bytes_of(detail::mutable_view(data));
    if (auto ec = check_root(root, "broadcast")) return finished(ec);
    const Tag tag = next_collective_tag();
    return submit([d, root, tag](State& s, Lane& lane) {
      return broadcast_job(s, d, root, tag, lane);
    });
  }
  /// Out-of-place broadcast: `out` ends with root's `in` (`in` is read on the root only).
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void broadcast(const In& in, Out&& out, int root) {
    std::error_code ec;
    broadcast(in, out, root, ec);
    raise(ec);
  }
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void broadcast(const In& in, Out&& out, int root, std::error_code& ec) noexcept {
    const auto i = detail::bytes_of(detail::const_view(in));
    const auto o = detail::bytes_of(detail::mutable_view(out));
    ec = guard([&] {
      if (i.size() != o.size()) {
        return invalid("broadcast", "input has " + std::to_string(i.size()) +
                                        " bytes but output has " + std::to_string(o.size()) +
                                        "; out-of-place broadcast needs equal sizes");
      }
      if (rank() == root && !i.empty() && i.data() != o.data()) {
        std::memmove(o.data(), i.data(), i.size());
      }
      return broadcast_now(o, root);
    });
  }

  /// All-to-all: `in` and `out` have the same size, a multiple of size(); block k of `in` goes to
  /// rank k and arrives as block `rank()` of its `out`. One round of direct exchanges.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_to_all(const In& in, Out&& out) {
    raise(all_to_all_now(detail::const_view(in), detail::mutable_view(out)));
  }
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_to_all(const In& in, Out&& out, std::error_code& ec) noexcept {
    ec = guard([&] { return all_to_all_now(detail::const_view(in), detail::mutable_view(out)); });
  }

  /// Returns once every rank has entered the barrier (a 1-byte all-reduce).
  void barrier() { raise(barrier_now()); }
  void barrier(std::error_code& ec) noexcept {
    ec = guard([&] { return barrier_now(); });
  }

  /// Point to point: `send(data, dst)` to any rank, matched by `recv(data, src)` on `dst` with the
  /// same size. Messages between two ranks arrive in the order they were sent. A send may not
  /// complete before the matching receive is posted, so pair them as with MPI_Ssend (or use the
  /// `_async` forms to post both sides first).
  template <Buffer R>
  void send(const R& data, int dst) {
    raise(send_now(detail::bytes_of(detail::const_view(data)), dst));
  }
  template <Buffer R>
  void send(const R& data, int dst, std::error_code& ec) noexcept {
    ec = guard([&] { return send_now(detail::bytes_of(detail::const_view(data)), dst); });
  }
  template <Buffer R>
  Request send_async(const R& data, int dst) {
    const auto d = detail::bytes_of(detail::const_view(data));
    if (auto ec = check_peer(dst, "send")) return finished(ec);
    return post_p2p(true, d, {}, dst, next_send_tag(dst));
  }
  template <MutableBuffer R>
  void recv(R&& data, int src) {
    raise(recv_now(detail::bytes_of(detail::mutable_view(data)), src));
  }
  template <MutableBuffer R>
  void recv(R&& data, int src, std::error_code& ec) noexcept {
    ec = guard([&] { return recv_now(detail::bytes_of(detail::mutable_view(data)), src); });
  }
  template <MutableBuffer R>
  Request recv_async(R&& data, int src) {
    const auto d = detail::bytes_of(detail::mutable_view(data));
    if (auto ec = check_peer(src, "recv")) return finished(ec);
    return post_p2p(false, {}, d, src, next_recv_tag(src));
  }

  // ---------------------------------------------------------------------------------------------
  // Groups
  // ---------------------------------------------------------------------------------------------

  /// Splits the group, with MPI_Comm_split semantics: ranks passing the same `color` form one
  /// subgroup, ordered by `key` (ties and negative keys keep this group's order). Every rank must
  /// call it. The subgroup shares this group's connections; its messages never mix with the
  /// parent's or a sibling's. Cost: one all-gather of 8 bytes per rank.
  Collective split(int color, int key = -1) {
    std::error_code ec;
    auto sub = split(color, key, ec);
    raise(ec);
    return std::move(*sub);
  }
  std::optional<Collective> split(int color, int key, std::error_code& ec) noexcept {
    std::optional<Collective> result;
    ec = guard([&] { return split_now(color, key, result); });
    return result;
  }

 private:
  // Staging memory of one thread: what the algorithm gets through its Call, and what a
  // composition around the algorithm uses (they are alive at the same time).
  struct Lane {
    Scratch scratch;
    Scratch compose;
  };

  struct State {
    State(T t, A a, Options o, std::uint64_t ctx)
        : transport(std::move(t)), algorithm(std::move(a)), options(o), context(ctx),
          send_sequence(static_cast<std::size_t>(transport.size()), 0),
          recv_sequence(static_cast<std::size_t>(transport.size()), 0) {}

    T transport;
    A algorithm;
    Options options;
    std::uint64_t context;  // 0 for a world group, derived by split() otherwise
    std::uint64_t collective_sequence = 0;
    std::uint64_t split_count = 0;
    std::vector<std::uint64_t> send_sequence;  // per peer, for point-to-point tags
    std::vector<std::uint64_t> recv_sequence;
    Lane caller;           // staging for calls on the caller's thread
    Lane background;       // staging for the asynchronous calls, on the worker thread
    Scratch fuse_scratch;  // packing buffer of all_sum_fused

    std::mutex error_mutex;
    std::error_code aborted;  // sticky once an I/O failure happened
    std::string aborted_message;

    // After `transport`: destroyed before it, waiting for what is still posted there.
    detail::PostedRequests posted;

    // Declared last: destroyed first, so queued jobs finish while the rest is still alive.
    std::unique_ptr<detail::Worker> worker;
  };

  // Collective tags have the top bit clear; point-to-point tags set it, and count per peer and
  // direction (ranks do not agree on how many messages they exchanged with others).
  static constexpr Tag p2p_bit = Tag{1} << 63;

  Tag next_collective_tag() noexcept {
    constexpr std::uint64_t sequences = p2p_bit / Call::tag_span;
    return (state_->collective_sequence++ % sequences) * Call::tag_span;
  }
  Tag next_send_tag(int peer) noexcept {
    return p2p_bit | state_->send_sequence[static_cast<std::size_t>(peer)]++;
  }
  Tag next_recv_tag(int peer) noexcept {
    return p2p_bit | state_->recv_sequence[static_cast<std::size_t>(peer)]++;
  }

  // ----- error plumbing ----------------------------------------------------------------------

  void raise(std::error_code ec) const {
    if (ec) throw Error(ec, detail::last_error_message);
  }

  // Runs `body` for the non-throwing forms: an allocation failure becomes an error code.
  template <class Body>
  static std::error_code guard(Body&& body) noexcept {
    try {
      return body();
    } catch (const std::bad_alloc&) {
      detail::last_error_message = "collie: out of memory";
      return std::make_error_code(std::errc::not_enough_memory);
    } catch (const std::exception& e) {
      detail::last_error_message = std::string("collie: ") + e.what();
      return std::make_error_code(std::errc::io_error);
    }
  }

  static std::error_code invalid(std::string_view what, const std::string& text,
                                 errc code = errc::invalid_argument) {
    detail::last_error_message =
        "collie[" + name() + "] " + std::string(what) + ": " + text + " (nothing was sent)";
    return code;
  }

  static Request finished(std::error_code ec) {
    auto state = std::make_shared<detail::RequestState>();
    state->finish(ec, detail::last_error_message);
    return Request(std::move(state));
  }

  // Runs one communicating call: fails fast on an aborted group, gives the algorithm its Call,
  // and turns a failure into a message naming the operation, step and peer.
  template <class Body>
  static std::error_code run(State& s, std::string_view what, Tag tag, Scratch& scratch,
                             Body&& body) {
    if (auto ec = refuse_if_aborted(s, what)) return ec;
    Call call(tag, s.options.timeout, scratch);
    Failure failure{&s, what, {}, false};
    call.on_failure(&on_io_failure, &failure);
    const std::error_code ec = body(call);
    if (!ec) return ec;
    if (!failure.reported) {
      failure.message = describe(s, what, call, ec);
      if (is_io_failure(ec)) abort_group(s, ec, failure.message);
    }
    detail::last_error_message = std::move(failure.message);
    return ec;
  }

  // A call on a group that an earlier I/O failure aborted fails at once.
  static std::error_code refuse_if_aborted(State& s, std::string_view what) {
    std::lock_guard lock(s.error_mutex);
    if (!s.aborted) return {};
    detail::last_error_message = "collie[" + name() + "] " + std::string(what) +
                                 ": the group was aborted by an earlier error (" +
                                 s.aborted_message + "); create a new group";
    return errc::aborted;
  }

  // The first I/O failure of a call, as the algorithm saw it.
  struct Failure {
    State* state;
    std::string_view what;
    std::string message;
    bool reported;
  };

  static void on_io_failure(void* context, const Call& call, std::error_code ec) {
    auto& failure = *static_cast<Failure*>(context);
    if (failure.reported) return;
    failure.reported = true;
    failure.message = describe(*failure.state, failure.what, call, ec);
    abort_group(*failure.state, ec, failure.message);
  }

  // Marks the group aborted for good and, the first time, tells the peers at once, instead of
  // letting each of them time out on this rank.
  static void abort_group(State& s, std::error_code ec, const std::string& message) {
    bool first = false;
    {
      std::lock_guard lock(s.error_mutex);
      if (!s.aborted) {
        s.aborted = ec;
        s.aborted_message = message;
        first = true;
      }
    }
    if (first) s.transport.abort(message);
  }

  static std::string describe(State& s, std::string_view what, const Call& call,
                              std::error_code ec) {
    const Progress& at = call.progress();
    std::string text = "collie[" + name() + "] " + std::string(what) + ": " + std::string(at.phase);
    if (at.steps > 0) {
      text += " step " + std::to_string(at.step + 1) + " of " + std::to_string(at.steps);
    }
    const std::string peer = at.peer >= 0 ? s.transport.describe_peer(at.peer) : "a peer";
    if (at.peer >= 0) text += ", waiting for " + peer;
    text += ": " + ec.message();
    if (ec == errc::timed_out) {
      text += " after " + std::to_string(call.timeout().count()) + " ms. Check that " + peer +
              " is alive and calls the same collectives in the same order, or raise "
              "Options::timeout";
    } else if (ec == errc::connection_lost) {
      std::string reason;
      if constexpr (requires { s.transport.failure_reason(at.peer); }) {
        if (at.peer >= 0) reason = s.transport.failure_reason(at.peer);
      }
      text += ": " + peer + (reason.empty() ? " closed its connection or died" : " " + reason) +
              "; see its own output";
    } else if (ec == errc::protocol_error) {
      text += ": " + peer +
              " sent a message of another size; every rank must call the same collective with "
              "the same buffer sizes";
    }
    return text;
  }

  Request submit(std::function<std::error_code(State&, Lane&)> job) {
    if (!state_->worker) state_->worker = std::make_unique<detail::Worker>();
    auto request = std::make_shared<detail::RequestState>();
    State* s = state_.get();
    state_->worker->submit([s, request, job = std::move(job)] {
      std::error_code ec = guard([&] { return job(*s, s->background); });
      request->finish(ec, ec ? detail::last_error_message : std::string());
    });
    return Request(std::move(request));
  }

  // An asynchronous send (`sending`, of `out`) or receive (into `in`): posted to the transport
  // here, on the caller's thread, not queued for the worker. Queued, a receive would hold back
  // the sends started after it: ranks that each post their receives, then their sends, then
  // wait (MPI_Irecv, MPI_Isend, MPI_Waitall) would all wait in their first receive for a send
  // never posted. The Request completes it on the thread that waits, with no hand-off.
  Request post_p2p(bool sending, std::span<const std::byte> out, std::span<std::byte> in, int peer,
                   Tag tag) {
    State& s = *state_;
    const std::string_view what = sending ? "send" : "recv";
    if (auto ec = refuse_if_aborted(s, what)) return finished(ec);
    auto posted = std::make_shared<typename T::Request>(
        sending ? s.transport.post_send(peer, tag, out) : s.transport.post_recv(peer, tag, in));
    auto request = std::make_shared<detail::RequestState>();
    request->complete = [&s, posted, what, peer, tag](detail::RequestState& r, bool block) {
      complete_p2p(s, *posted, what, peer, tag, r, block);
    };
    s.posted.add(request);
    return Request(std::move(request));
  }

  // Waits for (`block`) or looks at an operation posted by post_p2p, and finishes `r` once it is
  // over, failing as a synchronous send or receive would.
  static void complete_p2p(State& s, typename T::Request& posted, std::string_view what, int peer,
                           Tag tag, detail::RequestState& r, bool block) noexcept {
    Scratch unused;
    Call call(tag, s.options.timeout, unused);
    call.at(what, 0, 0, peer);
    const Deadline deadline = block ? call.deadline() : Deadline::after(std::chrono::seconds(0));
    const std::error_code ec = s.transport.wait(posted, deadline);
    if (!block && ec == errc::timed_out) return;  // still under way
    if (ec == errc::timed_out) s.transport.cancel(posted);
    std::string message;
    if (ec) {
      const std::error_code failed = guard([&]() -> std::error_code {
        message = describe(s, what, call, ec);
        if (is_io_failure(ec)) abort_group(s, ec, message);
        return {};
      });
      if (failed) message = detail::last_error_message;
    }
    r.finish(ec, std::move(message));
  }

  // ----- checks (local, before any byte moves) ------------------------------------------------

  template <class E>
  std::error_code check_reduce(std::span<const E> in, std::span<E> out,
                               std::string_view what) const {
    if (in.size() != out.size()) {
      return invalid(what, "input has " + std::to_string(in.size()) + " elements but output has " +
                               std::to_string(out.size()) +
                               "; out-of-place reductions need equal sizes");
    }
    if (detail::overlaps_partially(std::as_bytes(in), std::as_bytes(out))) {
      return invalid(what, "input and output overlap partially; pass the same buffer twice "
                           "(or once) for in place");
    }
    return {};
  }

  std::error_code check_gather(std::span<const std::byte> in, std::span<std::byte> out,
                               std::size_t element_size) const {
    if (out.size() != in.size() * static_cast<std::size_t>(size())) {
      return invalid("all_gather", "output has " + std::to_string(out.size() / element_size) +
                                       " elements; it needs input size × group size = " +
                                       std::to_string(in.size() / element_size) + " × " +
                                       std::to_string(size()));
    }
    const auto own = out.subspan(static_cast<std::size_t>(rank()) * in.size(), in.size());
    if (detail::overlaps_partially(in, own) ||
        (detail::overlaps_partially(in, out) && in.data() != own.data())) {
      return invalid("all_gather", "input overlaps the output anywhere but in this rank's block");
    }
    return {};
  }

  template <class E>
  std::error_code check_scatter(std::span<const E> in, std::span<E> out) const {
    if (in.size() != out.size() * static_cast<std::size_t>(size())) {
      return invalid("sum_scatter", "input has " + std::to_string(in.size()) +
                                        " elements; it needs output size × group size = " +
                                        std::to_string(out.size()) + " × " +
                                        std::to_string(size()));
    }
    if (detail::overlaps_partially(std::as_bytes(in), std::as_bytes(out)) ||
        (in.data() == out.data() && !in.empty() && size() > 1)) {
      return invalid("sum_scatter", "input and output overlap; use separate buffers");
    }
    return {};
  }

  std::error_code check_root(int root, std::string_view what) const {
    if (root < 0 || root >= size()) {
      return invalid(what,
                     "root " + std::to_string(root) + " is outside [0, " + std::to_string(size()) +
                         ")",
                     errc::peer_out_of_range);
    }
    return {};
  }

  std::error_code check_peer(int peer, std::string_view what) const {
    if (size() == 1) {
      return invalid(what, "this group has a single rank, so there is no peer to talk to",
                     errc::singleton_group);
    }
    if (peer < 0 || peer >= size()) {
      return invalid(what,
                     "peer " + std::to_string(peer) + " is outside [0, " + std::to_string(size()) +
                         ")",
                     errc::peer_out_of_range);
    }
    if (peer == rank()) {
      return invalid(what, "rank " + std::to_string(peer) + " cannot " + std::string(what) +
                               " to or from itself; copy the buffer instead");
    }
    return {};
  }

  // ----- the algorithm, completed where it leaves something out --------------------------------

  static std::error_code algo_all_reduce(State& s, Call& call, std::span<std::byte> data,
                                         const Reduction& reduction, Scratch& compose) {
    if constexpr (detail::HasAllReduce<A, T>) {
      (void)compose;
      return s.algorithm.all_reduce(s.transport, call, data, reduction);
    } else {
      // reduce-scatter + all-gather over a copy padded to a multiple of p elements (the padding
      // is zeroed, reduced like the rest, and dropped).
      const auto p = static_cast<std::size_t>(s.transport.size());
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

  static std::error_code algo_reduce_scatter(State& s, Call& call, std::span<const std::byte> in,
                                             std::span<std::byte> out,
                                             const Reduction& reduction, Scratch& compose) {
    if constexpr (detail::HasReduceScatter<A, T>) {
      (void)compose;
      return s.algorithm.reduce_scatter(s.transport, call, in, out, reduction);
    } else {
      // all-reduce of a copy, keep this rank's block.
      auto copy = compose.get(in.size());
      std::memcpy(copy.data(), in.data(), in.size());
      if (auto ec = s.algorithm.all_reduce(s.transport, call, copy, reduction)) return ec;
      std::memcpy(out.data(), copy.data() + static_cast<std::size_t>(s.transport.rank()) * out.size(),
                  out.size());
      return {};
    }
  }

  static std::error_code algo_all_gather(State& s, Call& call, std::span<const std::byte> in,
                                         std::span<std::byte> out) {
    if constexpr (detail::HasAllGather<A, T>) {
      return s.algorithm.all_gather(s.transport, call, in, out);
    } else {
      return detail::direct_all_gather(s.transport, call, in, out);
    }
  }

  // ----- jobs: run on the caller's thread or the worker ---------------------------------------

  template <class E, class Op>
  static std::error_code reduce_job(State& s, std::span<const E> in, std::span<E> out, Op op,
                                    Tag tag, Lane& lane) {
    return run(s, "all_reduce", tag, lane.scratch, [&](Call& call) -> std::error_code {
      if (!in.empty() && in.data() != out.data()) std::memcpy(out.data(), in.data(), in.size_bytes());
      if (s.transport.size() == 1 || out.empty()) return {};
      const Reduction reduction = detail::make_reduction<E>(op);
      return algo_all_reduce(s, call, std::as_writable_bytes(out), reduction, lane.compose);
    });
  }

  static std::error_code gather_job(State& s, std::span<const std::byte> in,
                                    std::span<std::byte> out, Tag tag, Lane& lane) {
    return run(s, "all_gather", tag, lane.scratch, [&](Call& call) -> std::error_code {
      if (s.transport.size() == 1 || in.empty()) {
        if (!in.empty() && in.data() != out.data()) std::memmove(out.data(), in.data(), in.size());
        return {};
      }
      return algo_all_gather(s, call, in, out);
    });
  }

  template <class E, class Op>
  static std::error_code scatter_job(State& s, std::span<const E> in, std::span<E> out, Op op,
                                     Tag tag, Lane& lane) {
    return run(s, "sum_scatter", tag, lane.scratch, [&](Call& call) -> std::error_code {
      if (s.transport.size() == 1 || out.empty()) {
        if (!in.empty() && in.data() != out.data()) std::memcpy(out.data(), in.data(), in.size_bytes());
        return {};
      }
      const Reduction reduction = detail::make_reduction<E>(op);
      return algo_reduce_scatter(s, call, std::as_bytes(in), std::as_writable_bytes(out),
                                 reduction, lane.compose);
    });
  }

  static std::error_code broadcast_job(State& s, std::span<std::byte> data, int root, Tag tag,
                                       Lane& lane) {
    return run(s, "broadcast", tag, lane.scratch, [&](Call& call) -> std::error_code {
      if (s.transport.size() == 1 || data.empty()) return {};
      if constexpr (detail::HasBroadcast<A, T>) {
        return s.algorithm.broadcast(s.transport, call, data, root);
      } else {
        return detail::direct_broadcast(s.transport, call, data, root);
      }
    });
  }

  // A send of `out` when `sending`, a receive into `in` otherwise.
  static std::error_code p2p_job(State& s, bool sending, std::span<const std::byte> out,
                                 std::span<std::byte> in, int peer, Tag tag, Lane& lane) {
    return run(s, sending ? "send" : "recv", tag, lane.scratch, [&](Call& call) -> std::error_code {
      detail::Requests<T> requests(s.transport, call);
      if (sending) {
        requests.send(peer, tag, out, "send");
      } else {
        requests.recv(peer, tag, in, "recv");
      }
      return requests.wait_all();
    });
  }

  // ----- synchronous entry points -------------------------------------------------------------

  template <class E, class Op>
  std::error_code reduce_now(std::span<const E> in, std::span<E> out, const Op& op) {
    if (auto ec = check_reduce(in, out, "all_reduce")) return ec;
    return reduce_job<E>(*state_, in, out, op, next_collective_tag(), state_->caller);
  }

  template <class E>
  std::error_code gather_now(std::span<const E> in, std::span<E> out) {
    const auto i = std::as_bytes(in);
    const auto o = std::as_writable_bytes(out);
    if (auto ec = check_gather(i, o, sizeof(E))) return ec;
    return gather_job(*state_, i, o, next_collective_tag(), state_->caller);
  }

  template <class E, class Op>
  std::error_code scatter_now(std::span<const E> in, std::span<E> out, const Op& op) {
    if (auto ec = check_scatter(in, out)) return ec;
    return scatter_job<E>(*state_, in, out, op, next_collective_tag(), state_->caller);
  }

  std::error_code broadcast_now(std::span<std::byte> data, int root) {
    if (auto ec = check_root(root, "broadcast")) return ec;
    return broadcast_job(*state_, data, root, next_collective_tag(), state_->caller);
  }

  template <class E>
  std::error_code all_to_all_now(std::span<const E> in, std::span<E> out) {
    const auto p = static_cast<std::size_t>(size());
    if (in.size() != out.size() || in.size() % p != 0) {
      return invalid("all_to_all", "input has " + std::to_string(in.size()) +
                                       " elements and output " + std::to_string(out.size()) +
                                       "; both need the same size, a multiple of the group size " +
                                       std::to_string(p));
    }
    if (detail::overlaps_partially(std::as_bytes(in), std::as_bytes(out)) ||
        (in.data() == out.data() && !in.empty() && p > 1)) {
      return invalid("all_to_all", "input and output overlap; use separate buffers");
    }
    State& s = *state_;
    return run(s, "all_to_all", next_collective_tag(), s.caller.scratch, [&](Call& call) -> std::error_code {
      if (p == 1 || in.empty()) {
        if (!in.empty() && in.data() != out.data()) std::memcpy(out.data(), in.data(), in.size_bytes());
        return {};
      }
      if constexpr (detail::HasAllToAll<A, T>) {
        return s.algorithm.all_to_all(s.transport, call, std::as_bytes(in), std::as_writable_bytes(out));
      } else {
        return detail::direct_all_to_all(s.transport, call, std::as_bytes(in),
                                         std::as_writable_bytes(out));
      }
    });
  }

  std::error_code barrier_now() {
    State& s = *state_;
    return run(s, "barrier", next_collective_tag(), s.caller.scratch, [&](Call& call) -> std::error_code {
      if (s.transport.size() == 1) return {};
      std::uint8_t token = 1;
      const Max op;
      const Reduction reduction = detail::make_reduction<std::uint8_t>(op);
      return algo_all_reduce(s, call, std::as_writable_bytes(std::span(&token, 1)), reduction,
                             s.caller.compose);
    });
  }

  std::error_code send_now(std::span<const std::byte> data, int dst) {
    if (auto ec = check_peer(dst, "send")) return ec;
    return p2p_job(*state_, true, data, {}, dst, next_send_tag(dst), state_->caller);
  }

  std::error_code recv_now(std::span<std::byte> data, int src) {
    if (auto ec = check_peer(src, "recv")) return ec;
    return p2p_job(*state_, false, {}, data, src, next_recv_tag(src), state_->caller);
  }

  template <class R>
  std::error_code fused_now(R& buffers) {
    using E = element_t<std::ranges::range_reference_t<R>>;
    const std::size_t limit = std::max<std::size_t>(state_->options.fuse_bytes, sizeof(E));
    std::vector<std::span<E>> group;
    std::size_t group_bytes = 0;
    // Sums one batch: a lone buffer in place, several packed into one message.
    auto flush = [&]() -> std::error_code {
      if (group.empty()) return {};
      std::error_code ec;
      if (group.size() == 1) {
        ec = reduce_now(std::span<const E>(group[0]), group[0], Sum{});
      } else {
        auto packed = state_->fuse_scratch.get(group_bytes);
        std::size_t at = 0;
        for (auto b : group) {
          if (!b.empty()) std::memcpy(packed.data() + at, b.data(), b.size_bytes());
          at += b.size_bytes();
        }
        const std::span<E> whole(reinterpret_cast<E*>(packed.data()), group_bytes / sizeof(E));
        ec = reduce_now(std::span<const E>(whole), whole, Sum{});
        at = 0;
        for (auto b : group) {
          if (!ec && !b.empty()) std::memcpy(b.data(), packed.data() + at, b.size_bytes());
          at += b.size_bytes();
        }
      }
      group.clear();
      group_bytes = 0;
      return ec;
    };
    for (auto&& buffer : buffers) {
      const auto view = detail::mutable_view(buffer);
      if (group_bytes + view.size_bytes() > limit) {
        if (auto ec = flush()) return ec;
      }
      group.push_back(view);
      group_bytes += view.size_bytes();
    }
    return flush();
  }

  std::error_code split_now(int color, int key, std::optional<Collective>& result) {
    const int p = size();
    const std::array<std::int32_t, 2> mine{color, key < 0 ? rank() : key};
    std::vector<std::int32_t> all(2 * static_cast<std::size_t>(p));
    State& s = *state_;
    const auto in = std::as_bytes(std::span(mine));
    const auto out = std::as_writable_bytes(std::span(all));
    if (auto ec = run(s, "split", next_collective_tag(), s.caller.scratch,
                      [&](Call& call) -> std::error_code {
                        if (p == 1) {
                          std::memcpy(out.data(), in.data(), in.size());
                          return {};
                        }
                        return algo_all_gather(s, call, in, out);
                      })) {
      return ec;
    }
    std::vector<int> members;
    for (int k = 0; k < p; ++k) {
      if (all[2 * static_cast<std::size_t>(k)] == color) members.push_back(k);
    }
    std::stable_sort(members.begin(), members.end(), [&](int a, int b) {
      return all[2 * static_cast<std::size_t>(a) + 1] < all[2 * static_cast<std::size_t>(b) + 1];
    });
    const std::uint64_t context = detail::mix_context(s.context, ++s.split_count, color);
    Collective sub(s.transport.split(members, context), s.algorithm, s.options);
    sub.state_->context = context;
    result.emplace(std::move(sub));
    return {};
  }

  std::unique_ptr<State> state_;
};

}  // namespace collie
