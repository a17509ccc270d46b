// A C++ trainer that defines its own model and trains it on an in-process cluster (a core
// and N nodes in this process, the embedded default), printing each committed round, then
// fetches the trained parameters into its own buffer.
//
//   custom_trainer [NODES] [ROUNDS]
//
// The model is declared with gflex's builder, printed as the [model] table a job spec holds,
// checked as the core will check it, and trained on Fashion-MNIST (Debian's
// dataset-fashion-mnist). Exit status: 0 when the job is done, 1 otherwise.

#include <gflex/gflex.hpp>
#include <gflex/kernels/model_builder.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  const int nodes = argc > 1 ? std::atoi(argv[1]) : 2;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 10;
  if (nodes < 1 || rounds < 1) {
    std::fprintf(stderr, "usage: custom_trainer [NODES >= 1] [ROUNDS >= 1]\n");
    return 2;
  }
  std::printf("gflex SDK %s\n", gflex::sdk_version());

  // A small residual MLP: two hidden layers of 128 with a skip connection around the second.
  gflex::kernels::model_builder model("residual-mlp", {784});
  model.linear(128).relu().named("h1");
  model.linear(128).relu().add("h1");
  model.linear(10).softmax_xent();
  auto plan = model.plan();
  if (!plan) {
    std::fprintf(stderr, "the model is refused: %s\n", plan.error().message().c_str());
    return 1;
  }
  std::printf("%s", model.toml().c_str());
  std::printf("%lld parameters, %.0f FLOPs per sample forward\n",
              static_cast<long long>(plan->parameters), plan->forward_flops);

  const std::string spec = "[job]\nname = \"custom-trainer\"\nrounds = " + std::to_string(rounds) +
                           "\nworkers = " + std::to_string(nodes) +
                           "\nseed = 3\n"
                           "[inner]\nlocal_steps = 40\nbatch_size = 64\nlr = 0.002\n"
                           "[outer]\nlr = 0.7\nmomentum = 0.5\n"
                           "[data]\nset = \"fashion-mnist\"\n" +
                           model.toml();
  gflex::embedded_config config;
  config.nodes = nodes;
  auto cluster = gflex::embedded_cluster::start(config);
  if (!cluster) {
    std::fprintf(stderr, "the cluster did not start: %s\n", cluster.error().message().c_str());
    return 1;
  }
  auto& core = cluster->client();
  auto id = core.submit(spec);
  if (!id) {
    std::fprintf(stderr, "the job is refused: %s\n", id.error().message().c_str());
    return 1;
  }
  long long last_round = -1;
  auto done = core.wait(*id, [&](const gflex::job_status& s) {
    if (s.round == last_round) return;
    last_round = s.round;
    std::printf("round %lld/%lld: train loss %.4f, test accuracy %.4f, %d nodes\n",
                static_cast<long long>(s.round), static_cast<long long>(s.rounds), s.train_loss,
                s.test_accuracy, static_cast<int>(s.nodes));
    std::fflush(stdout);
  });
  if (!done) {
    std::fprintf(stderr, "the job could not run: %s\n", done.error().message().c_str());
    return 1;
  }
  std::printf("%s: %s, test accuracy %.4f after %lld rounds\n", done->job_id.c_str(),
              gflex::to_string(done->state), done->test_accuracy,
              static_cast<long long>(done->round));
  if (done->state != gflex::job_state::done) return 1;

  // The trained parameters, into this program's own buffer (block after block, in the order
  // the plan lists them).
  std::vector<float> parameters(static_cast<size_t>(plan->parameters));
  auto blocks = core.fetch_parameters(*id, parameters);
  if (!blocks) {
    std::fprintf(stderr, "fetch: %s\n", blocks.error().message().c_str());
    return 1;
  }
  double sum_sq = 0.0;
  for (float v : parameters) sum_sq += static_cast<double>(v) * v;
  std::printf("fetched %zu parameters in %zu blocks (%s first), L2 norm %.4f\n", parameters.size(),
              blocks->size(), blocks->front().c_str(), std::sqrt(sum_sq));
  return 0;
}
