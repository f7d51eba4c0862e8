// collie's version, for programs and build systems (CMake's package version and pkg-config's
// collie.pc read these three lines).
#pragma once

#define COLLIE_VERSION_MAJOR 0
#define COLLIE_VERSION_MINOR 3
#define COLLIE_VERSION_PATCH 0

/// The version as one number, major * 10000 + minor * 100 + patch (0.3.0 is 300), for `#if`.
#define COLLIE_VERSION \
  (COLLIE_VERSION_MAJOR * 10000 + COLLIE_VERSION_MINOR * 100 + COLLIE_VERSION_PATCH)
