// kvtierd: the kvtier daemon. See README.md for running it and docs/ for how it works; the
// program itself is RunKvtierd (daemon/daemon_main.h).
#include "daemon/daemon_main.h"

int main(int argc, char** argv) { return kvtier::RunKvtierd(argc, argv); }
