// create() for vmdk (see create.cc).
#pragma once

#include <string>

#include "formats/image.h"

namespace dmu::formats::vmdk {

Result<void> create(Env& env, const std::string& path, const CreateOptions& options);

}  // namespace dmu::formats::vmdk
