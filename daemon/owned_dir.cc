#include "daemon/owned_dir.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <system_error>

#include "ipc/base/errno_status.h"

namespace kvtier {

Status PrepareOwnedDir(const std::filesystem::path& dir, mode_t mode, std::string_view key) {
  const std::string name = std::string(key) + " " + dir.string();
  std::error_code ec;
  std::filesystem::create_directories(dir.parent_path(), ec);
  if (mkdir(dir.c_str(), mode) == 0) {
    // Exactly `mode`, whatever the umask.
    if (chmod(dir.c_str(), mode) != 0) return ErrnoStatus("chmod(" + dir.string() + ")", errno);
  } else if (errno != EEXIST) {
    return ErrnoStatus("cannot create " + name, errno);
  }
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0) return ErrnoStatus("stat(" + dir.string() + ")", errno);
  if (!S_ISDIR(st.st_mode)) {
    return Status(StatusCode::kFailedPrecondition, name + " is not a directory");
  }
  if (st.st_uid != geteuid()) {
    return Status(StatusCode::kPermissionDenied,
                  name + " is owned by uid " + std::to_string(st.st_uid) +
                      ", not by kvtierd's uid " + std::to_string(geteuid()) +
                      "; chown it to kvtierd's user");
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return Status(StatusCode::kPermissionDenied,
                  name + " is writable by group or others; chmod go-w it");
  }
  return Status::Ok();
}

}  // namespace kvtier
