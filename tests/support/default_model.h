// Tests that use the default model: they skip when it is not installed, unless
// DETINFER_REQUIRE_MODEL=1 (scripts/test.sh and CI set it), where a missing model is a failure.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "common/paths.h"

// Declares `const std::string var` holding the default model's path, or skips / fails the test.
#define DETINFER_DEFAULT_MODEL_OR_SKIP(var)                                                   \
  const std::string var = ::detinfer::default_model_path();                                   \
  if (!std::filesystem::exists(var)) {                                                        \
    if (std::getenv("DETINFER_REQUIRE_MODEL")) FAIL() << "default model missing: " << var;    \
    GTEST_SKIP() << "default model not installed (bash scripts/setup.sh --model-only)";      \
  }
