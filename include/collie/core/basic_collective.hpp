// BasicCollective<Core>: collie's typed, documented operation set, written once over a byte-level
// core. `Collective<Transport, Algorithm>` (one pair, chosen at compile time) and `Group` (a pair
// chosen at run time) are this class over their two cores, as Asio's sockets are one
// `basic_socket<Protocol>` over their protocols.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

#include "collie/core/buffer.hpp"
#include "collie/core/call.hpp"
#include "collie/core/detail/checks.hpp"
#include "collie/core/detail/core_state.hpp"
#include "collie/core/detail/make_reduction.hpp"
#include "collie/core/element.hpp"
#include "collie/core/error.hpp"
#include "collie/core/ops.hpp"
#include "collie/core/options.hpp"
#include "collie/core/request.hpp"

namespace collie {

namespace detail {

// What BasicCollective needs of a core: the byte-level operations, with the element type and the
// op already erased (a `Reduction`), every synchronous one non-throwing. Both cores model it:
// `PairCore<T, A>` runs one (transport, algorithm) pair, `RuntimeCore` does one `std::visit` per
// operation into the pair chosen at run time.
template <class C>
concept CollectiveCore =
    std::movable<C> &&
    requires(C& c, const C& cc, std::span<const std::byte> in, std::span<std::byte> out,
             const Reduction& reduction, int peer, std::shared_ptr<const void> keep,
             std::error_code& ec) {
      { cc.rank() } noexcept -> std::same_as<int>;
      { cc.size() } noexcept -> std::same_as<int>;
      { cc.name() } noexcept -> std::same_as<const std::string&>;
      { cc.options() } noexcept -> std::same_as<const Options&>;
      { c.fuse_space() } noexcept -> std::same_as<FuseSpace&>;
      { c.all_reduce(in, out, reduction) } noexcept -> std::same_as<std::error_code>;
      { c.reduce_scatter(in, out, reduction) } noexcept -> std::same_as<std::error_code>;
      { c.all_gather(in, out) } noexcept -> std::same_as<std::error_code>;
      { c.broadcast(out, peer) } noexcept -> std::same_as<std::error_code>;
      { c.all_to_all(in, out) } noexcept -> std::same_as<std::error_code>;
      { c.barrier() } noexcept -> std::same_as<std::error_code>;
      { c.send(in, peer) } noexcept -> std::same_as<std::error_code>;
      { c.recv(out, peer) } noexcept -> std::same_as<std::error_code>;
      { c.all_reduce_async(in, out, reduction, keep) } -> std::same_as<Request>;
      { c.reduce_scatter_async(in, out, reduction, keep) } -> std::same_as<Request>;
      { c.all_gather_async(in, out) } -> std::same_as<Request>;
      { c.broadcast_async(out, peer) } -> std::same_as<Request>;
      { c.all_to_all_async(in, out) } -> std::same_as<Request>;
      { c.barrier_async() } -> std::same_as<Request>;
      { c.send_async(in, peer) } -> std::same_as<Request>;
      { c.recv_async(out, peer) } -> std::same_as<Request>;
      { c.split(peer, peer, ec) } noexcept -> std::same_as<std::optional<C>>;
    };

// The constructor arguments of a typed core, and stand-ins that nobody can pass for the others.
template <class C>
inline constexpr bool is_pair_core_v = requires { typename C::transport_type; };
struct NoTransport {
  NoTransport() = delete;
};
struct NoAlgorithm {};
template <class C>
struct PolicyTypes {
  using transport = NoTransport;
  using algorithm = NoAlgorithm;
};
template <class C>
  requires is_pair_core_v<C>
struct PolicyTypes<C> {
  using transport = typename C::transport_type;
  using algorithm = typename C::algorithm_type;
};
template <class C>
using transport_of_t = typename PolicyTypes<C>::transport;
template <class C>
using algorithm_of_t = typename PolicyTypes<C>::algorithm;

// A range of buffers for the fused all_sum: std::vector<std::span<float>>,
// std::vector<std::vector<float>>, ...
template <class R>
concept BufferList =
    std::ranges::input_range<R> && MutableBuffer<std::ranges::range_reference_t<R>>;

}  // namespace detail

/// A group of ranks and every collective operation on it, over a byte-level core.
///
/// Users do not name this template; they use one of its two forms:
///
/// - `collie::Collective<Transport, Algorithm>` — one (transport, algorithm) pair fixed at
///   compile time, which pays for nothing else (collective.hpp):
///
///       collie::Collective<collie::TcpTransport, collie::Ring> c{collie::TcpTransport::connect(cfg)};
///
/// - `collie::Group` — the pair `collie::init()` found in the environment, among those compiled
///   into the build (runtime/group.hpp). Copies of a Group share one group:
///
///       collie::Group world = collie::init();
///
/// Both have exactly the operations below, with the same semantics, costs and errors.
///
/// **Buffers.** Every buffer is any contiguous sized range of a collie element type
/// (`std::vector`, `std::array`, `std::span`, C arrays; element types in element.hpp). A buffer
/// of another type, or a const one where the call writes, is a compile error that names the
/// `Buffer` or `MutableBuffer` concept. Operations with an input and an output take them
/// separately (out of place) or as one buffer (in place); `in` and `out` may be the very same
/// buffer but never partially overlap. Buffers must stay alive and untouched until the call
/// returns; for the `_async` forms, until their Request's `wait()` returns, which is why those
/// take only lvalues and views (`LastingBuffer`): a temporary container does not compile.
///
/// **Errors.** Every operation has two forms, as in Asio: the plain one throws `collie::Error`;
/// the one taking a trailing `std::error_code&` is `noexcept`, sets the code (cleared on
/// success), and leaves the full message in `last_error()`. Codes are `collie::errc` values:
/// - caller mistakes, found before any byte moves, leaving the group usable:
///   `errc::invalid_argument` (sizes that do not fit the operation, overlapping buffers),
///   `errc::peer_out_of_range` (a peer or root outside [0, size())), `errc::singleton_group`
///   (send or receive on a group of one rank);
/// - I/O failures, after which the group is aborted for good and every later call fails at once
///   with `errc::aborted`: `errc::timed_out` (a peer did not answer within
///   `options().timeout`; the message names the step and the peer), `errc::connection_lost`
///   (a peer died or aborted; the message says which and why), `errc::protocol_error` (a peer
///   called a different collective or used other sizes), and `std::errc::not_enough_memory`
///   (staging memory could not be allocated).
///
/// **Collective contract.** Every rank of the group must call the same collectives, in the same
/// order, with the same sizes (and root); send/recv pairs must match in size. A rank that calls
/// something else makes its peers fail with `errc::timed_out` or `errc::protocol_error`.
///
/// **Costs.** For p ranks and S bytes per rank, the steps and bytes each rank sends depend on
/// the algorithm: `Ring` and `Mesh` document theirs in a table (algorithm/ring.hpp,
/// algorithm/mesh.hpp; docs/algorithms.md); the lower bounds are 2(p-1)/p·S bytes for an
/// all-reduce, (p-1)/p·S_in for a reduce-scatter and (p-1)·S_in for an all-gather. A
/// synchronous call allocates nothing once the group has seen a call as large: staging and
/// per-call working memory are kept and reused. Measured times are in docs/performance.md.
///
/// **Threads.** Synchronous calls of one group are made from one thread at a time. The
/// asynchronous collectives of a group run on a worker thread it owns, one after another in the
/// order they were started, while synchronous calls may run at the same time on the caller's
/// thread. `send_async` and `recv_async` are posted to the transport at once and complete on the
/// thread that waits. Different groups (a parent and its `split` subgroups included) may be used
/// from different threads at once.
///
/// **One rank.** A group of one rank makes every collective an identity (in place, no copy at
/// all) and send/recv an error (`errc::singleton_group`), as in MLX.
template <detail::CollectiveCore Core>
class BasicCollective {
 public:
  using core_type = Core;

  /// `Collective<T, A>`: takes ownership of a connected transport. `algorithm` carries the
  /// algorithm's tuning (segment sizes, ring counts), `options` the timeout and the fusion
  /// threshold.
  ///
  ///   collie::Collective<collie::TcpTransport, collie::Ring> c{std::move(t), {.rings = 4}};
  explicit BasicCollective(detail::transport_of_t<Core> transport,
                           detail::algorithm_of_t<Core> algorithm = {}, Options options = {})
    requires detail::is_pair_core_v<Core>
      : core_(std::move(transport), std::move(algorithm), options) {}

  /// `Group`: wraps a typed collective (a `Collective<T, A>` of the enabled pairs); `backend` is
  /// the name `backend()` reports.
  template <class C>
    requires std::constructible_from<Core, C&&, std::string>
  BasicCollective(C collective, std::string backend)
      : core_(std::move(collective), std::move(backend)) {}

  /// Adopts a core (what `split` returns is built this way).
  explicit BasicCollective(Core core) noexcept : core_(std::move(core)) {}

  /// This rank, in [0, size()).
  int rank() const noexcept { return core_.rank(); }
  /// The number of ranks in the group.
  int size() const noexcept { return core_.size(); }
  /// The policies, "transport/algorithm" (e.g. "tcp/ring"); every error message starts with it.
  const std::string& name() const noexcept { return core_.name(); }
  /// The timeout and the fusion threshold this group was made with.
  const Options& options() const noexcept { return core_.options(); }

  /// The full message of the most recent failed call made on this thread, for users of the
  /// `std::error_code&` forms (the throwing forms carry it in `Error::what()`).
  static const std::string& last_error() noexcept { return detail::last_error_message; }

  /// The byte-level core (collie's own use; not a stable interface).
  Core& core() noexcept { return core_; }
  const Core& core() const noexcept { return core_; }

  /// `Collective<T, A>` only: its transport and its algorithm's settings.
  auto& transport() noexcept
    requires requires(Core& c) { c.transport(); }
  {
    return core_.transport();
  }
  const auto& algorithm() const noexcept
    requires requires(const Core& c) { c.algorithm(); }
  {
    return core_.algorithm();
  }

  /// `Group` only: the backend that made it — "ring", "jaccl", "mpi", "nccl", "inproc" (ranks as
  /// threads) or "singleton" (a group of one rank, when nothing was configured).
  const std::string& backend() const noexcept
    requires requires(const Core& c) {
      { c.backend() } noexcept -> std::same_as<const std::string&>;
    }
  {
    return core_.backend();
  }

  /// `Group` only: the typed collective behind it when it is a `C` (e.g.
  /// `Collective<TcpTransport, Ring>`), null otherwise. The typed object shares the group.
  template <class C>
    requires requires(Core& c) { c.template get_if<C>(); }
  C* get_if() noexcept {
    return core_.template get_if<C>();
  }

  // =============================================================================================
  // Reductions
  //
  // Every rank ends with the element-wise reduction over all ranks of `data` (in place) or of
  // `in` into `out` (out of place; `in` is left alone, and `out.size() == in.size()`).
  //
  // Cost: an all-reduce, whose steps and bytes the algorithm's table gives (Ring sends the
  // minimum, 2(p-1)/p·S per rank, over 2(p-1) steps for large S and fewer, log-depth, rounds
  // for small S; Mesh takes one round below its threshold). Results are bit-identical on every
  // rank. 16-bit floats are accumulated in float where an algorithm combines several
  // contributions at once, so their sums do not drift beyond the type's own rounding.
  //
  // Errors: `errc::invalid_argument` if `in` and `out` differ in size or overlap partially;
  // the I/O failures listed on the class.
  //
  //   std::vector<float> grads(n);
  //   world.all_sum(grads);                        // in place
  //   world.all_max(std::span(local), global);     // out of place
  // =============================================================================================

  /// Element-wise sum over all ranks (bool: logical or; integers wrap around).
  template <MutableBuffer R>
  void all_sum(R&& data) {
    all_reduce(data, Sum{});
  }
  /// As above; never throws, sets `ec` instead.
  template <MutableBuffer R>
  void all_sum(R&& data, std::error_code& ec) noexcept {
    all_reduce(data, Sum{}, ec);
  }
  /// Out of place: `out` = sum over all ranks of `in`.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_sum(const In& in, Out&& out) {
    all_reduce(in, out, Sum{});
  }
  /// As above; never throws, sets `ec` instead.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_sum(const In& in, Out&& out, std::error_code& ec) noexcept {
    all_reduce(in, out, Sum{}, ec);
  }
  /// Starts an in-place sum on the group's worker thread; see `Request`.
  template <LastingMutableBuffer R>
  Request all_sum_async(R&& data) {
    return all_reduce_async(data, Sum{});
  }

  /// Element-wise product over all ranks (bool: logical and; integers wrap around).
  template <MutableBuffer R>
  void all_prod(R&& data) {
    all_reduce(data, Prod{});
  }
  /// As above; never throws, sets `ec` instead.
  template <MutableBuffer R>
  void all_prod(R&& data, std::error_code& ec) noexcept {
    all_reduce(data, Prod{}, ec);
  }
  /// Out of place: `out` = product over all ranks of `in`.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_prod(const In& in, Out&& out) {
    all_reduce(in, out, Prod{});
  }
  /// As above; never throws, sets `ec` instead.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_prod(const In& in, Out&& out, std::error_code& ec) noexcept {
    all_reduce(in, out, Prod{}, ec);
  }
  /// Starts an in-place product on the group's worker thread; see `Request`.
  template <LastingMutableBuffer R>
  Request all_prod_async(R&& data) {
    return all_reduce_async(data, Prod{});
  }

  /// Element-wise maximum over all ranks (a NaN wins, -0 orders below +0; complex:
  /// lexicographic, real part first).
  template <MutableBuffer R>
  void all_max(R&& data) {
    all_reduce(data, Max{});
  }
  /// As above; never throws, sets `ec` instead.
  template <MutableBuffer R>
  void all_max(R&& data, std::error_code& ec) noexcept {
    all_reduce(data, Max{}, ec);
  }
  /// Out of place: `out` = maximum over all ranks of `in`.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_max(const In& in, Out&& out) {
    all_reduce(in, out, Max{});
  }
  /// As above; never throws, sets `ec` instead.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_max(const In& in, Out&& out, std::error_code& ec) noexcept {
    all_reduce(in, out, Max{}, ec);
  }
  /// Starts an in-place maximum on the group's worker thread; see `Request`.
  template <LastingMutableBuffer R>
  Request all_max_async(R&& data) {
    return all_reduce_async(data, Max{});
  }

  /// Element-wise minimum over all ranks (a NaN wins, -0 orders below +0; complex:
  /// lexicographic, real part first).
  template <MutableBuffer R>
  void all_min(R&& data) {
    all_reduce(data, Min{});
  }
  /// As above; never throws, sets `ec` instead.
  template <MutableBuffer R>
  void all_min(R&& data, std::error_code& ec) noexcept {
    all_reduce(data, Min{}, ec);
  }
  /// Out of place: `out` = minimum over all ranks of `in`.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_min(const In& in, Out&& out) {
    all_reduce(in, out, Min{});
  }
  /// As above; never throws, sets `ec` instead.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_min(const In& in, Out&& out, std::error_code& ec) noexcept {
    all_reduce(in, out, Min{}, ec);
  }
  /// Starts an in-place minimum on the group's worker thread; see `Request`.
  template <LastingMutableBuffer R>
  Request all_min_async(R&& data) {
    return all_reduce_async(data, Min{});
  }

  /// All-reduce with any collie op or user functor `op(a, b) -> E`. The functor must be
  /// associative and commutative (algorithms combine contributions in different orders on
  /// different parts of the buffer) and must not throw; it is called from this thread (or the
  /// worker, for `_async`) only.
  ///
  ///   world.all_reduce(bits, [](std::uint32_t a, std::uint32_t b) { return a ^ b; });
  template <MutableBuffer R, class Op>
    requires ReduceOp<Op, element_t<R>>
  void all_reduce(R&& data, Op op) {
    std::error_code ec;
    all_reduce(data, op, ec);
    raise(ec);
  }
  /// As above; never throws, sets `ec` instead.
  template <MutableBuffer R, class Op>
    requires ReduceOp<Op, element_t<R>>
  void all_reduce(R&& data, Op op, std::error_code& ec) noexcept {
    const auto bytes = detail::mutable_bytes(data);
    ec = reduce_bytes(bytes, bytes, detail::make_reduction<element_t<R>>(op));
  }
  /// Out of place: `out` = the reduction over all ranks of `in`.
  template <Buffer In, MutableBuffer Out, class Op>
    requires std::same_as<element_t<In>, element_t<Out>> && ReduceOp<Op, element_t<In>>
  void all_reduce(const In& in, Out&& out, Op op) {
    std::error_code ec;
    all_reduce(in, out, op, ec);
    raise(ec);
  }
  /// As above; never throws, sets `ec` instead.
  template <Buffer In, MutableBuffer Out, class Op>
    requires std::same_as<element_t<In>, element_t<Out>> && ReduceOp<Op, element_t<In>>
  void all_reduce(const In& in, Out&& out, Op op, std::error_code& ec) noexcept {
    ec = reduce_bytes(detail::const_bytes(in), detail::mutable_bytes(out),
                      detail::make_reduction<element_t<In>>(op));
  }
  /// Starts an in-place all-reduce on the group's worker thread; see `Request`. A functor with
  /// state is copied (one allocation); the built-in ops are not.
  template <LastingMutableBuffer R, class Op>
    requires ReduceOp<Op, element_t<R>>
  Request all_reduce_async(R&& data, Op op) {
    const auto bytes = detail::mutable_bytes(data);
    if (auto ec = detail::check_reduce(checked(), "all_reduce", bytes, bytes, sizeof(element_t<R>))) {
      return failed(ec);
    }
    return with_op<element_t<R>>(op, [&](const Reduction& r, std::shared_ptr<const void> keep) {
      return core_.all_reduce_async(bytes, bytes, r, std::move(keep));
    });
  }

  /// Fused all_sum of many buffers (MLX's `average_gradients`): consecutive buffers are packed
  /// into one message of at most `options().fuse_bytes` bytes (default 32 MiB), summed, and
  /// unpacked, so a model with thousands of small gradients pays a handful of round trips
  /// instead of thousands. A buffer larger than the threshold is summed alone, in place.
  /// `buffers` is any range of buffers of one element type, e.g. `std::vector<std::span<float>>`.
  /// Cost: one all-reduce per batch, plus a copy in and out of the packing buffer (kept and
  /// reused). Errors: as `all_sum`; after a failure, buffers not yet summed are left as they were.
  template <detail::BufferList R>
  void all_sum_fused(R&& buffers) {
    std::error_code ec;
    all_sum_fused(buffers, ec);
    raise(ec);
  }
  /// As above; never throws, sets `ec` instead.
  template <detail::BufferList R>
  void all_sum_fused(R&& buffers, std::error_code& ec) noexcept {
    using E = element_t<std::ranges::range_reference_t<R>>;
    static constexpr Sum op{};
    const Reduction reduction = detail::make_reduction<E>(op);
    detail::FuseSpace& space = core_.fuse_space();
    const std::size_t limit = std::max<std::size_t>(options().fuse_bytes, sizeof(E));
    ec.clear();
    try {
      space.pending.clear();
      std::size_t bytes = 0;
      for (auto&& buffer : buffers) {
        const auto view = detail::mutable_bytes(buffer);
        if (bytes + view.size() > limit) {
          if ((ec = flush_fused(space, bytes, reduction))) return;
        }
        space.pending.push_back(view);
        bytes += view.size();
      }
      ec = flush_fused(space, bytes, reduction);
    } catch (const std::bad_alloc&) {
      ec = out_of_memory("all_sum_fused");
    }
  }

  // =============================================================================================
  // Data movement
  // =============================================================================================

  /// All-gather: `out.size() == in.size() * size()`; block k of `out` is rank k's `in`
  /// (rank-major). In place: pass this rank's block of `out` as `in`.
  ///
  /// Cost: (p-1)·S_in bytes received per rank, the minimum; Ring takes p-1 steps (log2 p or
  /// ⌈log2 p⌉ rounds for small results), Mesh one round. Errors: `errc::invalid_argument` for
  /// a wrong `out` size or an `in` that overlaps `out` outside this rank's block.
  ///
  ///   std::vector<int> all(world.size());
  ///   world.all_gather(std::vector<int>{world.rank()}, all);   // 0, 1, 2, ...
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_gather(const In& in, Out&& out) {
    std::error_code ec;
    all_gather(in, out, ec);
    raise(ec);
  }
  /// As above; never throws, sets `ec` instead.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_gather(const In& in, Out&& out, std::error_code& ec) noexcept {
    ec = gather_bytes(detail::const_bytes(in), detail::mutable_bytes(out), sizeof(element_t<In>));
  }
  /// Starts an all-gather on the group's worker thread; see `Request`.
  template <LastingBuffer In, LastingMutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  Request all_gather_async(In&& in, Out&& out) {
    const auto i = detail::const_bytes(in);
    const auto o = detail::mutable_bytes(out);
    if (auto ec = detail::check_gather(checked(), i, o, sizeof(element_t<In>))) return failed(ec);
    return core_.all_gather_async(i, o);
  }

  /// Reduce-scatter with sum (MLX's `sum_scatter`): `in.size() == out.size() * size()`; rank k
  /// receives the sum over all ranks of block k of `in`. `in` and `out` must not overlap.
  ///
  /// Cost: (p-1)/p·S_in bytes sent per rank, the minimum; Ring takes p-1 steps (log2 p rounds
  /// for middle sizes when p is a power of two), Mesh one round. Errors:
  /// `errc::invalid_argument` for a wrong size or overlapping buffers.
  ///
  ///   std::vector<float> shard(full.size() / world.size());
  ///   world.sum_scatter(full, shard);
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void sum_scatter(const In& in, Out&& out) {
    reduce_scatter(in, out, Sum{});
  }
  /// As above; never throws, sets `ec` instead.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void sum_scatter(const In& in, Out&& out, std::error_code& ec) noexcept {
    reduce_scatter(in, out, Sum{}, ec);
  }
  /// Starts a sum-scatter on the group's worker thread; see `Request`.
  template <LastingBuffer In, LastingMutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  Request sum_scatter_async(In&& in, Out&& out) {
    return reduce_scatter_async(in, out, Sum{});
  }

  /// Reduce-scatter with any op (see `all_reduce` for what a functor must be): as `sum_scatter`.
  template <Buffer In, MutableBuffer Out, class Op>
    requires std::same_as<element_t<In>, element_t<Out>> && ReduceOp<Op, element_t<In>>
  void reduce_scatter(const In& in, Out&& out, Op op) {
    std::error_code ec;
    reduce_scatter(in, out, op, ec);
    raise(ec);
  }
  /// As above; never throws, sets `ec` instead.
  template <Buffer In, MutableBuffer Out, class Op>
    requires std::same_as<element_t<In>, element_t<Out>> && ReduceOp<Op, element_t<In>>
  void reduce_scatter(const In& in, Out&& out, Op op, std::error_code& ec) noexcept {
    ec = scatter_bytes(detail::const_bytes(in), detail::mutable_bytes(out),
                       detail::make_reduction<element_t<In>>(op));
  }
  /// Starts a reduce-scatter on the group's worker thread; see `Request`.
  template <LastingBuffer In, LastingMutableBuffer Out, class Op>
    requires std::same_as<element_t<In>, element_t<Out>> && ReduceOp<Op, element_t<In>>
  Request reduce_scatter_async(In&& in, Out&& out, Op op) {
    const auto i = detail::const_bytes(in);
    const auto o = detail::mutable_bytes(out);
    if (auto ec = detail::check_scatter(checked(), "reduce_scatter", i, o, sizeof(element_t<In>))) {
      return failed(ec);
    }
    return with_op<element_t<In>>(op, [&](const Reduction& r, std::shared_ptr<const void> keep) {
      return core_.reduce_scatter_async(i, o, r, std::move(keep));
    });
  }

  /// Broadcast: every rank ends with `root`'s `data`.
  ///
  /// Cost: S bytes into every rank; Ring pipelines a chain from the root (p-1 + segments - 1
  /// segment transfers), the others send from the root to everyone at once ((p-1)·S out of the
  /// root). Errors: `errc::peer_out_of_range` for a root outside [0, size()).
  ///
  ///   world.broadcast(weights, 0);
  template <MutableBuffer R>
  void broadcast(R&& data, int root) {
    std::error_code ec;
    broadcast(data, root, ec);
    raise(ec);
  }
  /// As above; never throws, sets `ec` instead.
  template <MutableBuffer R>
  void broadcast(R&& data, int root, std::error_code& ec) noexcept {
    if ((ec = detail::check_root(checked(), root, "broadcast"))) return;
    ec = core_.broadcast(detail::mutable_bytes(data), root);
  }
  /// Out of place: `out` ends with root's `in` (`in` is read on the root only); equal sizes.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void broadcast(const In& in, Out&& out, int root) {
    std::error_code ec;
    broadcast(in, out, root, ec);
    raise(ec);
  }
  /// As above; never throws, sets `ec` instead.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void broadcast(const In& in, Out&& out, int root, std::error_code& ec) noexcept {
    ec = broadcast_bytes(detail::const_bytes(in), detail::mutable_bytes(out), root);
  }
  /// Starts an in-place broadcast on the group's worker thread; see `Request`.
  template <LastingMutableBuffer R>
  Request broadcast_async(R&& data, int root) {
    if (auto ec = detail::check_root(checked(), root, "broadcast")) return failed(ec);
    return core_.broadcast_async(detail::mutable_bytes(data), root);
  }

  /// All-to-all: `in` and `out` have the same size, a multiple of size(), and do not overlap;
  /// block k of `in` goes to rank k and arrives as block `rank()` of its `out`.
  ///
  /// Cost: (p-1)/p·S bytes sent per rank, one round with every peer at once; Ring takes ⌈log2
  /// p⌉ rounds of one peer each for small blocks (Bruck's, about p/2·log2(p) blocks sent).
  /// Errors: `errc::invalid_argument` for sizes that differ or are no multiple of size(), or
  /// for overlapping buffers.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_to_all(const In& in, Out&& out) {
    std::error_code ec;
    all_to_all(in, out, ec);
    raise(ec);
  }
  /// As above; never throws, sets `ec` instead.
  template <Buffer In, MutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  void all_to_all(const In& in, Out&& out, std::error_code& ec) noexcept {
    const auto i = detail::const_bytes(in);
    const auto o = detail::mutable_bytes(out);
    if ((ec = detail::check_all_to_all(checked(), i, o, sizeof(element_t<In>)))) return;
    ec = core_.all_to_all(i, o);
  }
  /// Starts an all-to-all on the group's worker thread; see `Request`.
  template <LastingBuffer In, LastingMutableBuffer Out>
    requires std::same_as<element_t<In>, element_t<Out>>
  Request all_to_all_async(In&& in, Out&& out) {
    const auto i = detail::const_bytes(in);
    const auto o = detail::mutable_bytes(out);
    if (auto ec = detail::check_all_to_all(checked(), i, o, sizeof(element_t<In>))) return failed(ec);
    return core_.all_to_all_async(i, o);
  }

  /// Returns once every rank has entered the barrier. Cost: a 1-byte all-reduce.
  void barrier() { raise(core_.barrier()); }
  /// As above; never throws, sets `ec` instead.
  void barrier(std::error_code& ec) noexcept { ec = core_.barrier(); }
  /// Starts a barrier on the group's worker thread, after the collectives started before it.
  Request barrier_async() { return core_.barrier_async(); }

  // =============================================================================================
  // Point to point
  //
  // `send(data, dst)` to any rank, matched by `recv(data, src)` on `dst` with the same size.
  // Messages between two ranks arrive in the order they were sent. A send may not complete
  // before the matching receive is posted, so pair them as with MPI_Ssend (or use the `_async`
  // forms to post both sides first). Cost: S bytes, one message.
  //
  // Errors: `errc::singleton_group` on a group of one rank, `errc::peer_out_of_range` for a
  // peer outside [0, size()), `errc::invalid_argument` for this rank itself;
  // `errc::protocol_error` when the sizes of a send and its receive differ.
  //
  //   if (world.rank() == 0) world.send(block, 1);
  //   if (world.rank() == 1) world.recv(block, 0);
  // =============================================================================================

  /// Sends `data` to rank `dst`.
  template <Buffer R>
  void send(const R& data, int dst) {
    std::error_code ec;
    send(data, dst, ec);
    raise(ec);
  }
  /// As above; never throws, sets `ec` instead.
  template <Buffer R>
  void send(const R& data, int dst, std::error_code& ec) noexcept {
    if ((ec = detail::check_peer(checked(), dst, "send"))) return;
    ec = core_.send(detail::const_bytes(data), dst);
  }
  /// Posts a send to the transport at once; see `Request`.
  template <LastingBuffer R>
  Request send_async(R&& data, int dst) {
    if (auto ec = detail::check_peer(checked(), dst, "send")) return failed(ec);
    return core_.send_async(detail::const_bytes(data), dst);
  }
  /// Receives from rank `src` into `data`, whose size must be the size sent.
  template <MutableBuffer R>
  void recv(R&& data, int src) {
    std::error_code ec;
    recv(data, src, ec);
    raise(ec);
  }
  /// As above; never throws, sets `ec` instead.
  template <MutableBuffer R>
  void recv(R&& data, int src, std::error_code& ec) noexcept {
    if ((ec = detail::check_peer(checked(), src, "recv"))) return;
    ec = core_.recv(detail::mutable_bytes(data), src);
  }
  /// Posts a receive to the transport at once; see `Request`.
  template <LastingMutableBuffer R>
  Request recv_async(R&& data, int src) {
    if (auto ec = detail::check_peer(checked(), src, "recv")) return failed(ec);
    return core_.recv_async(detail::mutable_bytes(data), src);
  }

  // =============================================================================================
  // Groups
  // =============================================================================================

  /// Splits the group, with MPI_Comm_split semantics: ranks passing the same `color` form one
  /// subgroup, ordered by `key` (ties and negative keys keep this group's order). Every rank
  /// must call it. The subgroup shares this group's connections; its messages never mix with the
  /// parent's or a sibling's, so both may be used at once (from different threads, too).
  /// Cost: one all-gather of 8 bytes per rank. Errors: the I/O failures listed on the class.
  ///
  ///   auto row = world.split(world.rank() / 4);   // groups of 4 consecutive ranks
  BasicCollective split(int color, int key = -1) {
    std::error_code ec;
    auto sub = split(color, key, ec);
    raise(ec);
    return std::move(*sub);
  }
  /// As above; never throws: nothing, with `ec` set, on failure.
  std::optional<BasicCollective> split(int color, int key, std::error_code& ec) noexcept {
    auto sub = core_.split(color, key, ec);
    if (!sub) return std::nullopt;
    std::optional<BasicCollective> result;
    result.emplace(std::move(*sub));
    return result;
  }

 private:
  detail::CheckedGroup checked() const noexcept { return {name(), rank(), size()}; }

  static void raise(std::error_code ec) {
    if (ec) throw Error(ec, detail::last_error_message);
  }

  std::error_code out_of_memory(std::string_view what) const noexcept {
    try {
      detail::last_error_message = detail::concat({"collie[", name(), "] ", what, ": out of memory"});
    } catch (...) {
    }
    return std::make_error_code(std::errc::not_enough_memory);
  }

  // A Request that has already failed (a mistake found before anything started).
  static Request failed(std::error_code ec) {
    auto state = std::make_shared<detail::RequestState>();
    state->finish(ec, detail::last_error_message);
    return Request(std::move(state));
  }

  // Calls `start(reduction, keep_alive)` with a reduction whose op outlives the asynchronous
  // call: a stateless op is referenced where it always lives, one with state is copied.
  template <class E, class Op, class Start>
  static Request with_op(const Op& op, Start&& start) {
    if constexpr (std::is_empty_v<Op> && std::is_trivially_default_constructible_v<Op>) {
      (void)op;
      static const Op instance{};
      return start(detail::make_reduction<E>(instance), nullptr);
    } else {
      auto copy = std::make_shared<const Op>(op);
      const Reduction reduction = detail::make_reduction<E>(*copy);
      return start(reduction, std::move(copy));
    }
  }

  // ----- byte-level entry points: checks, then the core (compiled once per core) ---------------

  std::error_code reduce_bytes(std::span<const std::byte> in, std::span<std::byte> out,
                               const Reduction& reduction) noexcept {
    if (auto ec = detail::check_reduce(checked(), "all_reduce", in, out, reduction.element_size)) {
      return ec;
    }
    return core_.all_reduce(in, out, reduction);
  }

  std::error_code scatter_bytes(std::span<const std::byte> in, std::span<std::byte> out,
                                const Reduction& reduction) noexcept {
    if (auto ec = detail::check_scatter(checked(), "reduce_scatter", in, out,
                                        reduction.element_size)) {
      return ec;
    }
    return core_.reduce_scatter(in, out, reduction);
  }

  std::error_code gather_bytes(std::span<const std::byte> in, std::span<std::byte> out,
                               std::size_t element_size) noexcept {
    if (auto ec = detail::check_gather(checked(), in, out, element_size)) return ec;
    return core_.all_gather(in, out);
  }

  std::error_code broadcast_bytes(std::span<const std::byte> in, std::span<std::byte> out,
                                  int root) noexcept {
    if (auto ec = detail::check_root(checked(), root, "broadcast")) return ec;
    if (auto ec = detail::check_broadcast(checked(), in, out)) return ec;
    if (rank() == root && !in.empty() && in.data() != out.data()) {
      std::memmove(out.data(), in.data(), in.size());
    }
    return core_.broadcast(out, root);
  }

  // Sums the buffers in `space.pending` (of `bytes` bytes in all): one alone in place, several
  // packed into one message and unpacked again.
  std::error_code flush_fused(detail::FuseSpace& space, std::size_t& bytes,
                              const Reduction& reduction) noexcept {
    std::error_code ec;
    if (space.pending.size() == 1) {
      ec = reduce_bytes(space.pending[0], space.pending[0], reduction);
    } else if (space.pending.size() > 1) {
      std::span<std::byte> packed;
      try {
        packed = space.packed.get(bytes);
      } catch (const std::bad_alloc&) {
        return out_of_memory("all_sum_fused");
      }
      std::size_t at = 0;
      for (auto b : space.pending) {
        if (!b.empty()) std::memcpy(packed.data() + at, b.data(), b.size());
        at += b.size();
      }
      ec = reduce_bytes(packed, packed, reduction);
      at = 0;
      for (auto b : space.pending) {
        if (!ec && !b.empty()) std::memcpy(b.data(), packed.data() + at, b.size());
        at += b.size();
      }
    }
    space.pending.clear();
    bytes = 0;
    return ec;
  }

  Core core_;
};

}  // namespace collie
