// Placeholder until the chain lands.
#include "formats/chain.h"

namespace dmu::formats {

Result<std::unique_ptr<Chain>> Chain::open(Env&, const std::string& path, const ChainOptions&) {
  return fail(ENOTSUP, path + ": backing chains are not supported yet");
}

}  // namespace dmu::formats
