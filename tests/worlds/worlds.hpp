// Every test world, one per enabled transport (see world.hpp).
#pragma once

#include "collie/runtime/enabled.hpp"
#include "inprocess.hpp"
#include "world.hpp"

#if COLLIE_WITH_TCP
#include "tcp.hpp"
#endif
