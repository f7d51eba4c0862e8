// Collective<Transport, Algorithm>: the compile-time face of collie. One transport and one
// algorithm, fixed in the type; every operation of `BasicCollective` (basic_collective.hpp) on
// them, composing what the algorithm leaves out.
#pragma once

#include "collie/core/basic_collective.hpp"
#include "collie/core/concepts.hpp"
#include "collie/core/detail/pair_core.hpp"

namespace collie {

/// The typed collective object: one `Transport` and one `Algorithm` policy, chosen at compile
/// time. It is what `collie::init()` builds behind a `collie::Group`, and what
/// performance-minded users instantiate directly to pay for nothing else:
///
///   collie::TcpConfig config = collie::ring_config_from_environment();
///   collie::Collective<collie::TcpTransport, collie::Ring> ring(
///       collie::TcpTransport::connect(config), collie::Ring{.rings = 4});
///   ring.all_sum(x);
///
/// Construction: `Collective<T, A>(T transport, A algorithm = {}, Options options = {})` takes
/// ownership of a connected transport; `algorithm` carries the algorithm's tuning (segment
/// sizes, ring counts), `options` the timeout and the fusion threshold. The operations, their
/// costs, errors and threading rules are those of `BasicCollective`; `transport()` and
/// `algorithm()` give access to the two policies. A Collective is move-only.
///
/// What the algorithm leaves out is composed: an all-reduce from a reduce-scatter and an
/// all-gather (or the reverse), broadcast, all-gather and all-to-all by direct exchange with
/// every peer, the barrier from a 1-byte all-reduce, send/recv from the transport's own
/// messages (docs/algorithms.md has the table).
///
/// An invalid pairing does not compile, and the compiler names the concept that failed:
/// `Collective<int, Ring>` fails `Transport<int>`, and an algorithm whose collectives need a
/// refinement of the transport (e.g. `NativeCollectiveTransport`) fails `AlgorithmFor` over
/// any transport without it.
template <class T, class A>
  requires Transport<T> && AlgorithmFor<A, T>
using Collective = BasicCollective<detail::PairCore<T, A>>;

}  // namespace collie
