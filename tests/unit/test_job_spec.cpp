#include <doctest/doctest.h>

#include <fstream>
#include <string>

#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/printable_text.hpp"
#include "gflex/runtime/toml_nesting.hpp"
#include "temp_dir.hpp"

using namespace gflex;

namespace {

const std::string source = "job.toml";

// The error message for `text`, which must fail to parse as errc::invalid_argument.
std::string failure(const std::string& text) {
  auto r = parse_job_spec(text, source);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code() == errc::invalid_argument);
  return r.error().message();
}

// A minimal valid spec plus `extra` lines in [job].
std::string with_job(const std::string& extra) {
  return "[job]\nworkload = \"fashion-mlp\"\n" + extra + "\n";
}

// A minimal valid spec plus `body`, which may open other tables.
std::string with(const std::string& body) {
  return with_job("") + body + "\n";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST_SUITE("job_spec") {
  TEST_CASE("the shipped fashion-mlp spec parses with every key as documented") {
    auto file = std::filesystem::path(GFLEX_SOURCE_DIR) / "apps/jobs/fashion-mlp.toml";
    auto r = load_job_spec(file);
    REQUIRE_MESSAGE(r.has_value(), r.error().message());
    CHECK(r->name == "fashion-mlp");
    CHECK(r->workload == "fashion-mlp");
    CHECK(r->rounds == 30);
    CHECK(r->workers == 3);
    CHECK(r->seed == 1);
    CHECK(r->inner == inner_optimizer::adamw);
    CHECK(r->local_steps == 50);
    CHECK(r->batch_size == 128);
    CHECK(r->inner_lr == 0.001);
    CHECK(r->weight_decay == 0.0);
    CHECK(r->outer_lr == 0.5);
    CHECK(r->outer_momentum == 0.8);
    CHECK(r->schedule == lr_schedule::cosine);
    CHECK(r->compression == compression::int8);
    CHECK(r->eval_every == 1);
    CHECK(r->tier == trust_tier::hybrid);
    CHECK(r->tolerance == 0.5);
    CHECK(r->norm_tolerance == 0.05);
    CHECK(r->norm_bound == 4.0);
    CHECK(r->min_cosine == 0.0);
    CHECK(r->clip == 2.0);
    CHECK(r->trim == 0.0);
  }

  TEST_CASE("the trust table: tiers, bounds and the clip gap") {
    auto r = parse_job_spec(
        with("[trust]\ntier = \"core\"\ntrim = 0.25\nclip = 0\nmin_cosine = -1"), source);
    REQUIRE_MESSAGE(r.has_value(), r.error().message());
    CHECK(r->tier == trust_tier::core);
    CHECK(r->trim == 0.25);
    CHECK(r->clip == 0.0);
    CHECK(r->min_cosine == -1.0);
    CHECK(contains(failure(with("[trust]\ntier = \"volunteer\"")),
                   "trust.tier: must be one of \"hybrid\", \"core\", \"community\""));
    CHECK(contains(failure(with("[trust]\ntolerance = 0")), "trust.tolerance"));
    CHECK(contains(failure(with("[trust]\nnorm_tolerance = 1.5")), "trust.norm_tolerance"));
    // Loosened, never tightened below the platform's bounds: a result outside them flags its
    // node everywhere, and a job's owner would have honest nodes banned.
    CHECK(contains(failure(with("[trust]\ntolerance = 0.001")),
                   "trust.tolerance: must be in [0.5, 1], got 0.001: a tighter bound would flag "
                   "and ban honest nodes"));
    CHECK(contains(failure(with("[trust]\nnorm_tolerance = 0.01")),
                   "trust.norm_tolerance: must be in [0.05, 1], got 0.01"));
    auto loose = parse_job_spec(with("[trust]\ntolerance = 0.8\nnorm_tolerance = 0.1"), source);
    REQUIRE_MESSAGE(loose.has_value(), loose.error().message());
    CHECK(loose->tolerance == 0.8);
    CHECK(loose->norm_tolerance == 0.1);
    CHECK(contains(failure(with("[trust]\nnorm_bound = 1.0")), "trust.norm_bound"));
    CHECK(contains(failure(with("[trust]\ntrim = 0.5")), "trust.trim"));
    CHECK(contains(failure(with("[trust]\nclip = 0.5")),
                   "trust.clip: must be 0 (off) or in [1, 1000]"));
    CHECK(contains(failure(with("[trust]\nmin_cosine = nan")), "trust.min_cosine"));
  }

  TEST_CASE("missing keys take the defaults") {
    auto r = parse_job_spec("[job]\nworkload = \"w\"\n", source);
    REQUIRE_MESSAGE(r.has_value(), r.error().message());
    job_spec expected_spec;
    expected_spec.workload = "w";
    CHECK(*r == expected_spec);
    CHECK(r->name == "job");
    CHECK(r->inner_lr == 1e-3);

    // Dotted keys at the top level are the same keys.
    auto dotted = parse_job_spec("job.workload = \"w\"\n", source);
    REQUIRE(dotted.has_value());
    CHECK(*dotted == expected_spec);
  }

  TEST_CASE("integers are accepted for numbers") {
    auto r = parse_job_spec(with("[outer]\nlr = 1\nmomentum = 0\n[inner]\nlr = 10"), source);
    REQUIRE_MESSAGE(r.has_value(), r.error().message());
    CHECK(r->outer_lr == 1.0);
    CHECK(r->outer_momentum == 0.0);
    CHECK(r->inner_lr == 10.0);
  }

  TEST_CASE("a learning rate the workers' 32-bit floats would read as 0 is refused") {
    // Sent as a float, 1e-46 is 0: the spec was accepted, and every node refused every
    // assignment of the job ("lr positive"), which then waited for good.
    for (const char* table : {"inner", "outer"}) {
      CAPTURE(table);
      auto r = parse_job_spec(with(std::string("[") + table + "]\nlr = 1e-46"), source);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().message().find(std::string(table) + ".lr: must be a number in [1e-30, 10]") !=
            std::string::npos);
    }
    auto least = parse_job_spec(with("[inner]\nlr = 1e-30"), source);
    REQUIRE_MESSAGE(least.has_value(), least.error().message());
    CHECK(static_cast<float>(inner_lr_at(*least, least->rounds - 1)) > 0.0f);
  }

  TEST_CASE("to_toml round-trips exactly") {
    job_spec spec;
    spec.name = "a.b_c-9";
    spec.workload = "a.b_c-9";
    spec.rounds = 100000;
    spec.workers = 1024;
    spec.seed = 9223372036854775807u;
    spec.local_steps = 1;
    spec.batch_size = 65536;
    spec.inner_lr = 0.1 + 0.2;  // Not the double nearest 0.3: needs all 17 digits.
    spec.weight_decay = 1e-5;
    spec.outer_lr = 1;
    spec.outer_momentum = 0.9999999999999999;
    spec.compression = compression::fp32;
    spec.eval_every = 7;
    std::string text = to_toml(spec);
    auto r = parse_job_spec(text, source);
    REQUIRE_MESSAGE(r.has_value(), (r.error().message() + "\n" + text));
    CHECK(*r == spec);
    CHECK(contains(text, "lr = 1.0\n"));

    // The defaults round-trip too.
    job_spec defaults;
    defaults.workload = "w";
    auto d = parse_job_spec(to_toml(defaults), source);
    REQUIRE(d.has_value());
    CHECK(*d == defaults);
    CHECK(contains(to_toml(defaults), "lr = 0.001\n"));
  }

  TEST_CASE("a model given as an inline table round-trips, with the same text as a section") {
    const std::string layers =
        "input = [4], layers = [ { type = \"linear\", units = 2 }, { type = \"softmax_xent\" } ]";
    auto inline_form = parse_job_spec(
        "model = { name = \"tiny\", " + layers + " }\n[job]\nrounds = 2\n[data]\nset = \"x\"\n",
        source);
    REQUIRE_MESSAGE(inline_form.has_value(), inline_form.error().message());
    auto section_form = parse_job_spec(
        "[job]\nrounds = 2\n[data]\nset = \"x\"\n[model]\nname = \"tiny\"\ninput = [4]\n"
        "layers = [ { type = \"linear\", units = 2 }, { type = \"softmax_xent\" } ]\n",
        source);
    REQUIRE_MESSAGE(section_form.has_value(), section_form.error().message());
    CHECK(inline_form->model == section_form->model);
    const std::string text = to_toml(*inline_form);
    auto again = parse_job_spec(text, source);
    REQUIRE_MESSAGE(again.has_value(), again.error().message() << "\n" << text);
    CHECK(*again == *inline_form);
  }

  TEST_CASE("every key is read and written: a spec with no default value round-trips") {
    // Each key of the field table set away from its default: a key the table could read but
    // not write (or the reverse) comes back as its default, or is refused as unknown.
    const std::string text = R"([job]
name = "every-key"
workload = "tiny"
rounds = 7
workers = 5
seed = 99
[inner]
optimizer = "sgd"
local_steps = 9
batch_size = 33
lr = 0.25
lr_schedule = "constant"
precision = "bf16"
[outer]
lr = 0.75
momentum = 0.5
[wire]
compression = "fp32"
[eval]
every = 3
[round]
deadline_s = 60.5
quorum = 0.75
backup_after = 0.0
[trust]
tier = "community"
tolerance = 0.75
norm_tolerance = 0.5
norm_bound = 8.0
min_cosine = -0.5
clip = 0.0
trim = 0.25
[market]
account = "user/alice"
budget = 500.0
max_price = 12.5
min_reputation = 0.625
deadline_h = 48.0
[data]
set = "fashion-mnist"
[model]
name = "tiny"
)";
    auto spec = parse_job_spec(text, source);
    REQUIRE_MESSAGE(spec.has_value(), spec.error().message());
    job_spec defaults;
    CHECK(spec->name != defaults.name);
    CHECK(spec->rounds != defaults.rounds);
    CHECK(spec->workers != defaults.workers);
    CHECK(spec->seed != defaults.seed);
    CHECK(spec->inner != defaults.inner);
    CHECK(spec->local_steps != defaults.local_steps);
    CHECK(spec->batch_size != defaults.batch_size);
    CHECK(spec->inner_lr != defaults.inner_lr);
    CHECK(spec->schedule != defaults.schedule);
    CHECK(spec->precision != defaults.precision);
    CHECK(spec->outer_lr != defaults.outer_lr);
    CHECK(spec->outer_momentum != defaults.outer_momentum);
    CHECK(spec->compression != defaults.compression);
    CHECK(spec->eval_every != defaults.eval_every);
    CHECK(spec->deadline_s != defaults.deadline_s);
    CHECK(spec->quorum != defaults.quorum);
    CHECK(spec->backup_after != defaults.backup_after);
    CHECK(spec->tier != defaults.tier);
    CHECK(spec->tolerance != defaults.tolerance);
    CHECK(spec->norm_tolerance != defaults.norm_tolerance);
    CHECK(spec->norm_bound != defaults.norm_bound);
    CHECK(spec->min_cosine != defaults.min_cosine);
    CHECK(spec->clip != defaults.clip);
    CHECK(spec->trim != defaults.trim);
    CHECK(spec->account == "user/alice");
    CHECK(spec->budget == 500000000);
    CHECK(spec->max_price == 12500000);
    CHECK(spec->min_reputation != defaults.min_reputation);
    CHECK(spec->deadline_h != defaults.deadline_h);
    CHECK(spec->data_set == "fashion-mnist");
    CHECK(spec->model == "[model]\nname = 'tiny'\n");

    const std::string written = to_toml(*spec);
    auto back = parse_job_spec(written, source);
    REQUIRE_MESSAGE(back.has_value(), (back.error().message() + "\n" + written));
    CHECK(*back == *spec);
    CHECK(to_toml(*back) == written);

    // Weight decay is AdamW's (plain SGD refuses it): read and written with it.
    auto decayed =
        parse_job_spec("[job]\nworkload = \"w\"\n[inner]\nweight_decay = 0.125\n", source);
    REQUIRE_MESSAGE(decayed.has_value(), decayed.error().message());
    CHECK(decayed->weight_decay != defaults.weight_decay);
    auto decayed_back = parse_job_spec(to_toml(*decayed), source);
    REQUIRE(decayed_back.has_value());
    CHECK(*decayed_back == *decayed);
  }

  TEST_CASE("a TOML syntax error gives line and column") {
    auto m = failure("[job]\nworkload = \"w\"\nrounds = [1,\n");
    CHECK(contains(m, "job.toml:3:"));
    CHECK(contains(m, "invalid TOML"));
    // The column too, and toml++'s own description of the problem.
    m = failure("[job]\nworkload = \"w\"\nrounds = 3 3\n");
    CHECK(contains(m, "job.toml:3:12: invalid TOML: "));
    CHECK(contains(m, "saw '3'"));
    m = failure("[job]\nworkload = \"w\"\nworkload = \"x\"\n");  // A duplicate key.
    CHECK(contains(m, "job.toml:3:"));
  }

  TEST_CASE("unknown keys and tables name the full dotted key") {
    auto m = failure(with("[inner]\noptimzer = \"sgd\""));
    CHECK(m == "job.toml: inner.optimzer: unknown key");
    CHECK(failure(with("[evaluation]\nevery = 2")) == "job.toml: evaluation: unknown table");
    CHECK(failure(with("[inner.adam]\nbeta1 = 0.9")) == "job.toml: inner.adam: unknown table");
    CHECK(failure("rounds = 3\n" + with("")) == "job.toml: rounds: unknown key");
    CHECK(failure(with_job("\"odd key\" = 1")) == "job.toml: job.\"odd key\": unknown key");
    // Of several unknown keys, the first in the text is reported.
    m = failure(with("[outer]\nzz = 1\n[inner]\naa = 1"));
    CHECK(m == "job.toml: outer.zz: unknown key");
    // A known table given as something else.
    CHECK(failure("job = 3\n") == "job.toml: job: must be a table, got integer");
    CHECK(failure(with("[[eval]]\nevery = 1")) == "job.toml: eval: must be a table, got array");
  }

  TEST_CASE("wrong types name the key and the type given") {
    CHECK(failure(with_job("rounds = \"30\"")) ==
          "job.toml: job.rounds: must be an integer, got string");
    CHECK(failure(with("[inner]\nlocal_steps = 50.0")) ==
          "job.toml: inner.local_steps: must be an integer, got float");
    CHECK(failure(with("[outer]\nlr = true")) ==
          "job.toml: outer.lr: must be a number, got boolean");
    CHECK(failure(with("[wire]\ncompression = 8")) ==
          "job.toml: wire.compression: must be a string, got integer");
    CHECK(failure("[job]\nworkload = [\"a\"]\n") ==
          "job.toml: job.workload: must be a string, got array");
    CHECK(failure(with_job("name = 1979-05-27")) ==
          "job.toml: job.name: must be a string, got date");
  }

  TEST_CASE("out-of-range integers give the range and the value") {
    CHECK(failure(with("[inner]\nlocal_steps = -3")) ==
          "job.toml: inner.local_steps: must be an integer in [1, 100000], got -3");
    CHECK(failure(with_job("rounds = 0")) ==
          "job.toml: job.rounds: must be an integer in [1, 100000], got 0");
    CHECK(failure(with_job("workers = 1025")) ==
          "job.toml: job.workers: must be an integer in [1, 1024], got 1025");
    CHECK(failure(with("[inner]\nbatch_size = 65537")) ==
          "job.toml: inner.batch_size: must be an integer in [1, 65536], got 65537");
    CHECK(failure(with("[eval]\nevery = 100001")) ==
          "job.toml: eval.every: must be an integer in [1, 100000], got 100001");
    auto m = failure(with_job("seed = -1"));
    CHECK(contains(m, "job.toml: job.seed: must be an integer in [0, "));
    CHECK(contains(m, "got -1"));
    // Bounds are inclusive.
    CHECK(parse_job_spec(with_job("rounds = 100000\nworkers = 1\nseed = 0"), source).has_value());
  }

  TEST_CASE("out-of-range and non-finite numbers give the interval and the value") {
    CHECK(failure(with("[outer]\nmomentum = 1.5")) ==
          "job.toml: outer.momentum: must be a number in [0, 1), got 1.5");
    CHECK(failure(with("[outer]\nmomentum = 1")) ==
          "job.toml: outer.momentum: must be a number in [0, 1), got 1");
    CHECK(failure(with("[inner]\nlr = 0")) ==
          "job.toml: inner.lr: must be a number in [1e-30, 10], got 0");
    CHECK(failure(with("[round]\ndeadline_s = 0.0004")) ==
          "job.toml: round.deadline_s: must be a number in [1, 86400], got 4e-04");
    CHECK(contains(failure(with("[round]\ndeadline_s = 1e-300")), "round.deadline_s"));
    CHECK(parse_job_spec(with("[round]\ndeadline_s = 1"), source).has_value());
    CHECK(failure(with("[outer]\nlr = 10.5")) ==
          "job.toml: outer.lr: must be a number in [1e-30, 10], got 10.5");
    CHECK(failure(with("[inner]\nweight_decay = -0.1")) ==
          "job.toml: inner.weight_decay: must be a number in [0, 1), got -0.1");
    // AdamW's decay factor 1 - lr x weight_decay at 0 or below: the model flipped each step.
    CHECK(failure(with("[inner]\nlr = 2.0\nweight_decay = 0.6")) ==
          "job.toml: inner.weight_decay: 0.6 times inner.lr 2 is 1 or more: each step would "
          "multiply every parameter by 1 - lr x weight_decay, which is not positive");
    CHECK(parse_job_spec(with("[inner]\nlr = 1.0\nweight_decay = 0.5"), source).has_value());
    // Below 1 in double, 1 in float (the nodes' arithmetic): a factor of exactly 0.
    CHECK(contains(failure(with("[inner]\nlr = 1.0\nweight_decay = 0.99999999")), "is 1 or more"));
    // Plain SGD steps by the gradient alone: it ran, ignoring the decay it was given.
    CHECK(failure(with("[inner]\noptimizer = \"sgd\"\nweight_decay = 0.01")) ==
          "job.toml: inner.weight_decay: applies to inner.optimizer = \"adamw\" only (plain SGD "
          "would ignore it)");
    CHECK(contains(failure(with("[inner]\nlr = nan")), "job.toml: inner.lr: must be a number in"));
    CHECK(contains(failure(with("[outer]\nlr = inf")), "got inf"));
    CHECK(contains(failure(with("[outer]\nmomentum = -inf")), "got -inf"));
    // Credits below half a micro-credit rounded to 0: a max_price that took only free nodes, a
    // budget read as none ("required with market.account").
    CHECK(failure(with("[market]\naccount = \"user/a\"\nbudget = 4e-7\nmax_price = 1")) ==
          "job.toml: market.budget: 4e-07 credits is less than a micro-credit (0.000001), the "
          "smallest amount there is");
    CHECK(contains(failure(with("[market]\nmax_price = 0.0000004")),
                   "market.max_price: 4e-07 credits is less than a micro-credit"));
    auto zero = parse_job_spec(with("[market]\nmax_price = 0"), source);
    REQUIRE(zero.has_value());
    CHECK(zero->max_price == 0);
  }

  TEST_CASE("enum strings must be one of the spellings") {
    CHECK(failure(with("[inner]\noptimizer = \"adam\"")) ==
          "job.toml: inner.optimizer: must be one of \"adamw\", \"sgd\", got \"adam\"");
    CHECK(failure(with("[wire]\ncompression = \"INT8\"")) ==
          "job.toml: wire.compression: must be one of \"fp32\", \"int8\", got \"INT8\"");
    auto r = parse_job_spec(with("[inner]\noptimizer = \"sgd\"\n[wire]\ncompression = \"fp32\""),
                            source);
    REQUIRE(r.has_value());
    CHECK(r->inner == inner_optimizer::sgd);
    CHECK(r->compression == compression::fp32);
    CHECK(std::string(to_string(inner_optimizer::adamw)) == "adamw");
    CHECK(std::string(to_string(compression::int8)) == "int8");
  }

  TEST_CASE("the workload is required, even in an empty spec") {
    CHECK(failure("") == "job.toml: job.workload: missing (required without a [model] table)");
    CHECK(failure("[job]\nname = \"x\"\n") ==
          "job.toml: job.workload: missing (required without a [model] table)");
    CHECK(failure("[job]\nworkload = \"\"\n") == "job.toml: job.workload: must not be empty");
  }

  TEST_CASE("a workload's label is a name: logs, statuses and the market carry it as it is") {
    // Escape codes and line breaks reached the core's log and every status raw.
    const std::string model = "[data]\nset = \"fashion-mnist\"\n[model]\nname = \"tiny\"\n";
    auto m = failure("[job]\nworkload = \"a\\u001b[2J\\nforged\"\n" + model);
    CHECK(contains(m, "job.toml: job.workload: must use only letters, digits"));
    CHECK(is_printable_text(m));
    CHECK(contains(failure("[job]\nworkload = \"" + std::string(65, 'w') + "\"\n"),
                   "job.workload: must be at most 64 characters, got 65"));
    m = failure("[data]\nset = \"fashion-mnist\"\n[model]\nname = \"my model\"\n");
    CHECK(
        m ==
        "job.toml: model.name: must use only letters, digits, '.', '_' and '-', got \"my model\"");
    // Two models of one label are two workloads to the market; a built-in stays its name.
    CHECK(market_workload("fashion-mlp", "") == "fashion-mlp");
    const auto a = market_workload("model", "[model]\nlayers = [1]\n");
    const auto b = market_workload("model", "[model]\nlayers = [2]\n");
    CHECK(a != b);
    CHECK(a.rfind("model#", 0) == 0);
    CHECK(a == market_workload("model", "[model]\nlayers = [1]\n"));
    CHECK(a.size() <= 128);  // what the market takes
  }

  TEST_CASE("a bad job name says what is allowed") {
    CHECK(failure(with_job("name = \"\"")) == "job.toml: job.name: must not be empty");
    CHECK(failure(with_job("name = \"" + std::string(65, 'a') + "\"")) ==
          "job.toml: job.name: must be at most 64 characters, got 65");
    auto m = failure(with_job("name = \"my job\""));
    CHECK(contains(m, "job.toml: job.name: must use only letters, digits"));
    CHECK(contains(m, "got \"my job\""));
    CHECK(parse_job_spec(with_job("name = \"" + std::string(64, 'a') + "\""), source).has_value());
  }

  TEST_CASE("the source name is used in every message") {
    auto r = parse_job_spec("[job]\nrounds = 0\nworkload = \"w\"\n", "/etc/jobs/x.toml");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message() ==
          "/etc/jobs/x.toml: job.rounds: must be an integer in [1, 100000], got 0");
  }

  TEST_CASE("load_job_spec reports files it cannot read as io_error") {
    auto missing = load_job_spec("/nonexistent/gflex/job.toml");
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code() == errc::io_error);
    CHECK(contains(missing.error().message(), "/nonexistent/gflex/job.toml"));

    test::temp_dir dir;
    auto on_dir = load_job_spec(dir.path());
    REQUIRE_FALSE(on_dir.has_value());
    CHECK(on_dir.error().code() == errc::io_error);

    // A file that reads but does not parse is invalid_argument, named by its path.
    auto file = dir.path() / "bad.toml";
    std::ofstream(file) << "[job]\nworkload = \"w\"\nrounds = -1\n";
    auto bad = load_job_spec(file);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().code() == errc::invalid_argument);
    CHECK(contains(bad.error().message(), file.string() + ": job.rounds:"));
  }

  TEST_CASE("load_job_spec reads no more of an endless file than a spec may have") {
    // /dev/zero never ends: the whole of it was read into memory before its size was checked.
    auto endless = load_job_spec("/dev/zero");
    REQUIRE_FALSE(endless.has_value());
    CHECK(endless.error().code() == errc::io_error);
    CHECK(contains(endless.error().message(),
                   "/dev/zero: larger than " + std::to_string(max_job_spec_bytes) + " bytes"));
  }
}

TEST_SUITE("job_spec") {
  TEST_CASE("the inner learning rate follows its schedule over the rounds") {
    job_spec spec;
    spec.rounds = 11;
    spec.inner_lr = 0.01;
    CHECK(inner_lr_at(spec, 0) == doctest::Approx(0.01));
    CHECK(inner_lr_at(spec, 5) == doctest::Approx(0.01 * (0.05 + 0.95 * 0.5)));
    CHECK(inner_lr_at(spec, 10) == doctest::Approx(0.0005));
    spec.schedule = lr_schedule::constant;
    CHECK(inner_lr_at(spec, 10) == doctest::Approx(0.01));
    auto bad =
        parse_job_spec("[job]\nworkload = \"w\"\n[inner]\nlr_schedule = \"step\"\n", "j.toml");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message().find("inner.lr_schedule") != std::string::npos);
  }

  TEST_CASE("a round's quorum is the fraction of its workers rounded up, as written") {
    // 0.07 x 100 is 7.000000000000001 in doubles: a round needed 8 results, not 7.
    job_spec spec;
    auto quorum = [&](double q, int64_t workers) {
      spec.quorum = q;
      spec.workers = workers;
      return quorum_results(spec);
    };
    CHECK(quorum(0.07, 100) == 7);
    CHECK(quorum(0.29, 100) == 29);
    CHECK(quorum(0.5, 3) == 2);
    CHECK(quorum(1.0, 5) == 5);
    CHECK(quorum(0.01, 1) == 1);
    CHECK(quorum(0.7, 10) == 7);
    CHECK(quorum(0.71, 10) == 8);
  }
}

TEST_SUITE("job_spec") {
  TEST_CASE("a spec whose keys nest 32,000 tables deep is refused, not parsed") {
    // 64 KiB of "a." under [model]: toml++ bounds nested arrays and inline tables, not the
    // tables a dotted key opens, and parsing it overflowed the stack of the core that read a
    // user's spec (SIGSEGV). Headers and keys outside [model] alike.
    std::string parts;
    for (int i = 0; i < 32000; ++i) parts += "a.";
    for (const auto& deep :
         {"[model]\n" + parts + "a = 1\n", parts + "a = 1\n", "[model." + parts + "a]\nx = 1\n"}) {
      const auto text = with(deep);
      REQUIRE(text.size() <= max_job_spec_bytes);
      const auto why = failure(text);
      CHECK_MESSAGE(contains(why, "nests 32"), why);
    }
    // Inline tables and arrays count too, with the dotted keys inside them.
    CHECK(contains(failure(with("x = {a.b.c = {d.e.f = " + std::string(30, '[') + "1" +
                                std::string(30, ']') + "}}")),
                   "nests"));
  }

  TEST_CASE("nesting is counted outside strings and comments only") {
    CHECK(toml_nesting("[job]\nworkload = \"fashion-mlp\"\n") == 2);  // the header's bracket
    CHECK(toml_nesting("a.b.c = 1") == 3);
    CHECK(toml_nesting("a . \"b.c\" . 'd' = 1") == 3);
    CHECK(toml_nesting("[[x.y]]\nz = [[1, 2], {u.v = 3}]") == 4);
    const std::string many = std::string(40, '[') + "." + std::string(40, '{');
    CHECK(toml_nesting("s = \"" + many + "\"  # " + many + "\nt = 'a.a.a.a'") == 1);
    CHECK(toml_nesting("s = \"\"\"\n" + many + "\\\"\"\"\n[[[\"\"\"\nk = 1") == 1);
    CHECK(toml_nesting("s = '''\n" + many + "\n'''''\nk = 1") == 1);
    // The shipped specs are far within the bound.
    for (const char* name : {"fashion-mlp.toml", "fashion-cnn.toml", "lm.toml"}) {
      std::ifstream in(std::string(GFLEX_SOURCE_DIR) + "/apps/jobs/" + name);
      const std::string text((std::istreambuf_iterator<char>(in)), {});
      REQUIRE_FALSE(text.empty());
      CHECK(toml_nesting(text) <= 8);
    }
  }
}
