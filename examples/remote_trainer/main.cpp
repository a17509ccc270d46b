// A C++ trainer against a remote core: connects with an account's API key over TLS pinned to
// the core's certificate, submits a model built in C++, follows the job to its end (rounds,
// the bill, nodes joining and lost) and writes the trained parameters: a checkpoint whose
// test accuracy `gflex eval OUT.gfck [--json FILE]` measures on Fashion-MNIST's test split
// (the model is an MLP, no language model for `gflex sample`).
//
//   remote_trainer HOST:PORT API_KEY_FILE CORE_CERT [ROUNDS] [OUT.gfck] [ACCOUNT:BUDGET]
//
// With ACCOUNT:BUDGET (user/NAME:CREDITS) the job is paid from that account, at most BUDGET
// credits, and the trainer reports the bill as rounds are paid for. It reports each change
// of the job's state with its reason: a job whose budget is spent is paused until its owner
// tops it up (`gflex topup JOB CREDITS`), and the trainer goes on following it.
// The core must have nodes joined (with their join tokens) to run the job. Exit status: 0
// when the job is done and its parameters are written, 1 otherwise, 2 for bad arguments.

#include <gflex/gflex.hpp>
#include <gflex/kernels/model_builder.hpp>
#include <gflex/runtime/checkpoint.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

namespace {

int fail(const std::string& what, const gflex::error& e) {
  std::fprintf(stderr, "%s: %s\n", what.c_str(), e.message().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: remote_trainer HOST:PORT API_KEY_FILE CORE_CERT [ROUNDS] [OUT] "
                 "[ACCOUNT:BUDGET]\n");
    return 2;
  }
  const std::string address = argv[1];
  const auto colon = address.rfind(':');
  const int port = colon == std::string::npos ? 0 : std::atoi(address.c_str() + colon + 1);
  if (port <= 0 || port > 65535) {
    std::fprintf(stderr, "remote_trainer: '%s' is not HOST:PORT\n", address.c_str());
    return 2;
  }
  std::ifstream key_file(argv[2]);
  std::string api_key;
  if (!(key_file >> api_key)) {
    std::fprintf(stderr, "remote_trainer: cannot read an API key from %s\n", argv[2]);
    return 2;
  }
  const int rounds = argc > 4 ? std::atoi(argv[4]) : 10;
  const std::string out = argc > 5 ? argv[5] : "remote_trainer.gfck";
  std::string market;
  if (argc > 6) {
    const std::string paid = argv[6];
    const auto at = paid.rfind(':');
    if (at == std::string::npos) {
      std::fprintf(stderr, "remote_trainer: '%s' is not ACCOUNT:BUDGET\n", paid.c_str());
      return 2;
    }
    market = "[market]\naccount = \"" + paid.substr(0, at) + "\"\nbudget = " + paid.substr(at + 1) +
             "\nmax_price = 10.0\n";
  }

  gflex::client_options options;
  options.api_key = api_key;
  options.core_cert = argv[3];
  auto core =
      gflex::client::connect(address.substr(0, colon), static_cast<uint16_t>(port), options);
  if (!core) return fail("cannot reach the core", core.error());

  gflex::kernels::model_builder model("remote-mlp", {784});
  model.linear(96).gelu().linear(10).softmax_xent();
  const std::string spec = "[job]\nname = \"remote-trainer\"\nrounds = " + std::to_string(rounds) +
                           "\nworkers = 2\n[inner]\nlocal_steps = 40\nbatch_size = 64\n" + market +
                           "[data]\nset = \"fashion-mnist\"\n" + model.toml();
  auto id = core->submit(spec);
  if (!id) return fail("the core refused the job", id.error());
  std::printf("submitted %s\n", id->c_str());
  // Follow the job: rounds, the bill, and nodes joining or lost while it runs.
  gflex::job_events events;
  events.on_round = [](const gflex::job_status& s, int64_t) {
    std::printf("round %lld/%lld: test accuracy %.4f\n", static_cast<long long>(s.round),
                static_cast<long long>(s.rounds), s.test_accuracy);
    std::fflush(stdout);
  };
  events.on_bill = [](const gflex::job_status& s, int64_t micro) {
    std::printf("bill: %+lld micro-credits (%lld of %lld spent)\n", static_cast<long long>(micro),
                static_cast<long long>(s.credits_spent), static_cast<long long>(s.budget));
  };
  // A paused job waits for its owner (a budget spent: `gflex topup JOB CREDITS` resumes it):
  // say so and why, rather than wait in silence.
  events.on_state = [](const gflex::job_status& s) {
    std::printf("%s %s%s%s\n", s.job_id.c_str(), gflex::to_string(s.state),
                s.detail.empty() ? "" : ": ", s.detail.c_str());
    std::fflush(stdout);
  };
  events.on_node_joined = [](const gflex::node_status& n) {
    std::printf("node %s joined (%s tier)\n", n.name.c_str(), gflex::to_string(n.tier));
    std::fflush(stdout);
  };
  events.on_node_lost = [](const gflex::node_status& n) {
    std::printf("node %s lost\n", n.name.c_str());
    std::fflush(stdout);
  };
  auto s = core->follow(*id, events);
  if (!s) return fail("follow", s.error());
  std::printf("%s: %s, test accuracy %.4f\n", id->c_str(), gflex::to_string(s->state),
              s->test_accuracy);
  if (s->state != gflex::job_state::done) return 1;
  auto bytes = core->fetch(*id);
  if (!bytes) return fail("fetch", bytes.error());
  // Whole or not at all: an interrupted write left a short file that looked like a model.
  if (auto written = gflex::write_file_atomically(out, *bytes); !written)
    return fail("write", written.error());
  std::printf("wrote %zu bytes of parameters to %s\n", bytes->size(), out.c_str());
  return 0;
}
