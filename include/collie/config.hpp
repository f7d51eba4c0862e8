// Build switches: header-only or separate compilation, and which backends a build carries.
// Every collie header includes this one first; define the macros on the compiler's command line
// (or through the Bazel and CMake targets, docs/building.md), the same for every translation
// unit of a program.
#pragma once

/// **COLLIE_SEPARATE_COMPILATION** — off by default (header-only). Defined, the non-template
/// parts that every program reaches through `init()` and `Group` — the runtime core, `init()`
/// itself, the backends' connection set-up (the TCP engine, the bootstrap store, the
/// rendezvous, hostfile and environment parsing) and the reduction kernels of the built-in ops —
/// are only declared by `<collie/collie.hpp>`, and compiled once, in one source file of the
/// program that does
///
///     #include <collie/src.hpp>
///
/// (the repository's `src/collie.cpp`; Bazel's `//:collie_separate` and CMake's
/// `collie::separate` build it for you). Define it for every translation unit of the program,
/// that one included, as with Asio's ASIO_SEPARATE_COMPILATION. In this mode
/// `<collie/collie.hpp>` declares the runtime API only (Group, init(), the element types, ops
/// and errors); the typed `Collective<Transport, Algorithm>` is still available by including
/// its headers (collie/core/collective.hpp, a transport's and an algorithm's header), which are
/// header-only in both modes.
#if defined(COLLIE_SEPARATE_COMPILATION)
#define COLLIE_DECL
#else
#define COLLIE_HEADER_ONLY 1
#define COLLIE_DECL inline
#endif

/// **COLLIE_WITH_TCP** — the ring backend (TcpTransport over Asio). Defaults to 1 where
/// `<asio.hpp>` can be found, else 0. With 0, Asio is not needed (nlohmann-json still is, for
/// device files and hostfiles), and `init("ring")` reports that the backend is not compiled in.
#ifndef COLLIE_WITH_TCP
#if __has_include(<asio.hpp>)
#define COLLIE_WITH_TCP 1
#else
#define COLLIE_WITH_TCP 0
#endif
#endif

/// **COLLIE_WITH_MPI**, **COLLIE_WITH_NCCL**, **COLLIE_WITH_IBVERBS** — the mpi, nccl and
/// jaccl backends. Their transports are not part of this version: the switches are reserved,
/// default to 0, and a build that asks for one stops here with a message, rather than
/// producing a program in which `init()` could not find the backend it was built for.
#ifndef COLLIE_WITH_MPI
#define COLLIE_WITH_MPI 0
#endif
#ifndef COLLIE_WITH_NCCL
#define COLLIE_WITH_NCCL 0
#endif
#ifndef COLLIE_WITH_IBVERBS
#define COLLIE_WITH_IBVERBS 0
#endif

#if COLLIE_WITH_MPI
#error "collie: COLLIE_WITH_MPI=1, but the mpi backend (MpiTransport) is not in this version of collie; build without it (docs/building.md)"
#endif
#if COLLIE_WITH_NCCL
#error "collie: COLLIE_WITH_NCCL=1, but the nccl backend (NcclTransport) is not in this version of collie; build without it (docs/building.md)"
#endif
#if COLLIE_WITH_IBVERBS
#error "collie: COLLIE_WITH_IBVERBS=1, but the jaccl backend (RdmaTransport) is not in this version of collie; build without it (docs/building.md)"
#endif
