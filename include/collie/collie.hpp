// The umbrella header: the core, every enabled transport and algorithm, Group and init().
//
//   #include <collie/collie.hpp>
//   collie::Group world = collie::init();
//   std::vector<float> x(10, 1.0f);
//   world.all_sum(x);
//
// With COLLIE_SEPARATE_COMPILATION (config.hpp) it declares the runtime API only — Group,
// init(), element types, ops, errors, requests — and none of the transports, so a program's
// translation units compile in a fraction of the time; the typed Collective<Transport, Algorithm>
// then comes from its own headers (core/collective.hpp, a transport's, an algorithm's).
#pragma once

#include "collie/config.hpp"
#include "collie/core/bfloat16.hpp"
#include "collie/core/buffer.hpp"
#include "collie/core/deadline.hpp"
#include "collie/core/element.hpp"
#include "collie/core/error.hpp"
#include "collie/core/float16.hpp"
#include "collie/core/ops.hpp"
#include "collie/core/options.hpp"
#include "collie/core/request.hpp"
#include "collie/runtime/group.hpp"
#include "collie/runtime/init.hpp"
#include "collie/version.hpp"

#if COLLIE_HEADER_ONLY
#include "collie/algorithm/mesh.hpp"
#include "collie/algorithm/ring.hpp"
#include "collie/core/collective.hpp"
#include "collie/core/concepts.hpp"
#include "collie/runtime/enabled.hpp"
#include "collie/runtime/threads.hpp"
#include "collie/transport/inprocess.hpp"
#endif
