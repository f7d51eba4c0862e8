// The two policy concepts collie is built from: a Transport moves bytes between ranks, an
// Algorithm turns point-to-point messages into collectives. `Collective<Transport, Algorithm>`
// (collective.hpp) composes one of each.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include "collie/core/call.hpp"
#include "collie/core/deadline.hpp"
#include "collie/core/element.hpp"
#include "collie/core/ops.hpp"

namespace collie {

/// Opt-in tags: a type models `Transport` / `Algorithm` only if it says so with
/// `using transport_concept = collie::transport_t;` (or `algorithm_concept = algorithm_t`), so a
/// type that merely happens to have matching member names is never mistaken for a policy.
struct transport_t {};
struct algorithm_t {};

/// A Transport moves bytes between the `size()` ranks of a group. It is the only place that knows
/// about sockets, queue pairs or communicators.
///
/// Requirements (all non-throwing; every failure surfaces as the `std::error_code` of `wait`):
/// - `T::name`: a short name for messages ("inproc", "tcp", ...).
/// - `rank()`, `size()`: this rank and the group size.
/// - `post_send(peer, tag, bytes)`, `post_recv(peer, tag, bytes)`: start a transfer to or from
///   any peer and return a `T::Request` at once. A receive matches the send from `peer` with the
///   same `tag`; the sizes must agree (a mismatch is `errc::protocol_error`). The memory must stay
///   valid until the request completes or is cancelled.
/// - `wait(request, deadline)`: block until the request completes (empty code), fails, or the
///   deadline passes (`errc::timed_out`, the request stays posted). With a deadline already
///   past it only looks, without blocking (`Request::ready` asks this way). A posted request
///   makes progress whether or not anyone waits on it: a receive posted before the send it
///   matches must not hold that send back.
/// - `cancel(request)`: withdraw a posted request; afterwards the transport no longer touches its
///   memory. Algorithms cancel whatever is still posted before they return.
/// - `split(members, context)`: a transport over the subgroup `members` (ranks of this group, in
///   their new order; the caller must be one of them), sharing this one's connections. Messages
///   of different `context` values never match each other.
/// - `describe_peer(peer)`: "rank 3" or "rank 3 (10.0.0.4:5000)", for error messages.
/// - `abort(reason)`: give up on the group after an I/O failure: tell the peers why (where the
///   wire allows) and close connections (or mark this rank dead), so that every peer's pending
///   and future waits on this rank fail at once instead of timing out. A failure thus spreads
///   through the group in one hop per rank, carrying the original reason (e.g. which rank died).
/// - optionally `failure_reason(peer)`: what is known about why `peer` failed, for messages.
///
/// Posting and waiting must be safe from two threads of the same rank at once (a group's
/// asynchronous operations run on a worker thread while the caller runs synchronous ones).
template <class T>
concept Transport =
    std::movable<T> && std::same_as<typename T::transport_concept, transport_t> &&
    std::movable<typename T::Request> &&
    requires(T& t, const T& ct, int peer, Tag tag, std::span<const std::byte> out,
             std::span<std::byte> in, typename T::Request& request, Deadline deadline,
             std::span<const int> members, std::uint64_t context) {
      { T::name } -> std::convertible_to<std::string_view>;
      { ct.rank() } noexcept -> std::same_as<int>;
      { ct.size() } noexcept -> std::same_as<int>;
      { t.post_send(peer, tag, out) } noexcept -> std::same_as<typename T::Request>;
      { t.post_recv(peer, tag, in) } noexcept -> std::same_as<typename T::Request>;
      { t.wait(request, deadline) } noexcept -> std::same_as<std::error_code>;
      { t.cancel(request) } noexcept -> std::same_as<void>;
      { ct.split(members, context) } -> std::same_as<T>;
      { ct.describe_peer(peer) } -> std::convertible_to<std::string>;
      { t.abort(std::string_view{}) } noexcept -> std::same_as<void>;
    };

/// Refinement: memory must be registered before the transport can move it (RDMA). Algorithms
/// that know this stage through registered memory instead of registering per call.
template <class T>
concept RegisteredMemoryTransport =
    Transport<T> && requires(T& t, std::span<std::byte> memory, typename T::MemoryRegion& region) {
      { t.register_memory(memory) } -> std::same_as<typename T::MemoryRegion>;
      { t.deregister_memory(region) } noexcept -> std::same_as<void>;
    };

/// Refinement: the transport moves device (GPU) memory and orders its work on a stream.
template <class T>
concept DeviceMemoryTransport =
    Transport<T> && requires(T& t, const void* pointer) {
      typename T::Stream;
      { t.stream() } noexcept -> std::same_as<typename T::Stream>;
      { t.is_device_memory(pointer) } noexcept -> std::same_as<bool>;
    };

/// Refinement: the transport has collectives of its own (MPI, NCCL), which the `Native`
/// algorithm forwards to. Element type and op travel as runtime tags because the library
/// underneath takes them that way.
template <class T>
concept NativeCollectiveTransport =
    Transport<T> &&
    requires(T& t, std::span<const std::byte> in, std::span<std::byte> out, DataType type,
             ReduceKind kind, int root, Deadline deadline) {
      { t.native_all_reduce(in, out, type, kind, deadline) } noexcept -> std::same_as<std::error_code>;
      { t.native_all_gather(in, out, deadline) } noexcept -> std::same_as<std::error_code>;
      { t.native_reduce_scatter(in, out, type, kind, deadline) } noexcept
          -> std::same_as<std::error_code>;
      { t.native_broadcast(out, root, deadline) } noexcept -> std::same_as<std::error_code>;
    };

/// An algorithm policy on its own: a small value type (chunk sizes, ring counts) with a name.
template <class A>
concept AlgorithmPolicy = std::semiregular<A> &&
                          std::same_as<typename A::algorithm_concept, algorithm_t> && requires {
                            { A::name } -> std::convertible_to<std::string_view>;
                          };

namespace detail {

// Which collectives an algorithm implements over transport T. The members take bytes (and a
// type-erased `Reduction`), return std::error_code explicitly, and are const.
template <class A, class T>
concept HasAllReduce = requires(const A& a, T& t, Call& call, std::span<std::byte> data,
                                const Reduction& reduction) {
  { a.all_reduce(t, call, data, reduction) } -> std::same_as<std::error_code>;
};

template <class A, class T>
concept HasReduceScatter =
    requires(const A& a, T& t, Call& call, std::span<const std::byte> in,
             std::span<std::byte> out, const Reduction& reduction) {
      { a.reduce_scatter(t, call, in, out, reduction) } -> std::same_as<std::error_code>;
    };

template <class A, class T>
concept HasAllGather = requires(const A& a, T& t, Call& call, std::span<const std::byte> in,
                                std::span<std::byte> out) {
  { a.all_gather(t, call, in, out) } -> std::same_as<std::error_code>;
};

template <class A, class T>
concept HasBroadcast =
    requires(const A& a, T& t, Call& call, std::span<std::byte> data, int root) {
      { a.broadcast(t, call, data, root) } -> std::same_as<std::error_code>;
    };

template <class A, class T>
concept HasAllToAll = requires(const A& a, T& t, Call& call, std::span<const std::byte> in,
                               std::span<std::byte> out) {
  { a.all_to_all(t, call, in, out) } -> std::same_as<std::error_code>;
};

}  // namespace detail

/// An Algorithm that can run over transport T: it implements at least a reduction
/// (`all_reduce` or `reduce_scatter`) over T. `Collective` composes everything the algorithm
/// leaves out (all_reduce = reduce_scatter + all_gather, barrier = a 1-byte all_reduce, direct
/// exchanges for the rest). An algorithm whose members are constrained to a refinement (e.g.
/// `Native` needs a `NativeCollectiveTransport`) does not model `AlgorithmFor` other transports.
template <class A, class T>
concept AlgorithmFor = Transport<T> && AlgorithmPolicy<A> &&
                       (detail::HasAllReduce<A, T> || detail::HasReduceScatter<A, T>);

}  // namespace collie
