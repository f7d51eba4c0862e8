// The umbrella header: the core, every enabled transport and algorithm, Group and init().
//
//   #include <collie/collie.hpp>
//   collie::Group world = collie::init();
//   std::vector<float> x(10, 1.0f);
//   world.all_sum(x);
#pragma once

#include "collie/algorithm/mesh.hpp"
#include "collie/algorithm/ring.hpp"
#include "collie/core/bfloat16.hpp"
#include "collie/core/buffer.hpp"
#include "collie/core/collective.hpp"
#include "collie/core/concepts.hpp"
#include "collie/core/deadline.hpp"
#include "collie/core/element.hpp"
#include "collie/core/error.hpp"
#include "collie/core/float16.hpp"
#include "collie/core/ops.hpp"
#include "collie/core/options.hpp"
#include "collie/core/request.hpp"
#include "collie/runtime/enabled.hpp"
#include "collie/runtime/group.hpp"
#include "collie/runtime/init.hpp"
#include "collie/runtime/threads.hpp"
#include "collie/transport/inprocess.hpp"
