// qemu-img info's "format-specific" object for an image's FormatSpecific
// (formats/image.h): the same keys and values qemu-img 7.2 prints, so `dmu
// info --output=json` and the oracle tests can compare them with QEMU's.
#pragma once

#include <nlohmann/json.hpp>

#include "formats/image.h"

namespace dmu::formats {

// null for formats that have no format-specific data (raw, qcow).
nlohmann::json format_specific_json(const FormatSpecific& specific);

}  // namespace dmu::formats
