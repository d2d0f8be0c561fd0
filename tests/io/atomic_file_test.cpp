// What a writer killed inside write_directory_atomically leaves is removed
// once its process is gone, and only then.
#include "deltatune/io/atomic_file.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "test_paths.h"

namespace deltatune::io {
namespace {
namespace fs = std::filesystem;

// The pid of a process that has exited and been reaped.
pid_t a_finished_process() {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  return child;
}

fs::path staging_of(const fs::path& dir, pid_t writer) {
  const fs::path staging = dir.parent_path() / ("." + dir.filename().string() + ".partial-" +
                                                std::to_string(writer) + "-AbC123");
  fs::create_directories(staging);
  std::ofstream(staging / "state.json") << "{}";
  return staging;
}

TEST(AtomicDirectory, AbandonedStagingIsRemovedAndALiveWritersIsKept) {
  test::ScratchDir tmp;
  const fs::path checkpoint = tmp.path() / "priming" / "checkpoint";
  const fs::path abandoned = staging_of(checkpoint, a_finished_process());
  const fs::path live = staging_of(checkpoint, ::getpid());
  const fs::path other = staging_of(tmp.path() / "priming" / "delta", a_finished_process());
  remove_abandoned_partials(checkpoint);
  EXPECT_FALSE(fs::exists(abandoned));
  EXPECT_TRUE(fs::exists(live)) << "a running writer's staging directory was removed";
  EXPECT_TRUE(fs::exists(other)) << "another directory's staging was removed";
}

TEST(AtomicDirectory, AWriteReplacesTheDirectoryAndLeavesNoStaging) {
  test::ScratchDir tmp;
  const fs::path dir = tmp.path() / "checkpoint";
  for (const std::string text : {"old", "new"})
    write_directory_atomically(dir, [&](const fs::path& staging) {
      std::ofstream(staging / "state.json") << text;
    });
  EXPECT_EQ(read_text_file(dir / "state.json"), "new");
  for (const auto& entry : fs::directory_iterator(tmp.path()))
    EXPECT_EQ(entry.path().filename(), "checkpoint") << entry.path();
}

}  // namespace
}  // namespace deltatune::io
