#include "crypto/openssl_error.h"

#include <string>
#include <utility>

#include <openssl/err.h>

namespace kvtier {

Status OpenSslError(std::string_view what) {
  std::string message = "OpenSSL " + std::string(what) + " failed";
  const unsigned long err = ERR_get_error();
  if (err != 0) {
    char reason[256];
    ERR_error_string_n(err, reason, sizeof(reason));
    message += ": ";
    message += reason;
  }
  ERR_clear_error();
  return Status(StatusCode::kInternal, std::move(message));
}

}  // namespace kvtier
