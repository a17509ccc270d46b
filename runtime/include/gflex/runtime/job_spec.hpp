#pragma once
/// @file
/// A training job as a user submits it, read from TOML. toml++ stays out of this header:
/// only job_spec.cpp includes it, so callers do not pay for its compile time.

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "gflex/runtime/enum_names.hpp"
#include "gflex/runtime/error.hpp"
#include "gflex/runtime/precision.hpp"
#include "gflex/runtime/update_codec.hpp"

namespace gflex {

/// The optimizer each assignment runs for its local steps.
enum class inner_optimizer : uint8_t { adamw = 0, sgd = 1 };

/// How the inner learning rate changes over the rounds of a job.
enum class lr_schedule : uint8_t {
  constant = 0,  ///< `lr` in every round.
  cosine = 1,    ///< From `lr` in round 1 down a half cosine to lr / 20 in the last round.
};

/// Which workers a job's assignments go to.
enum class trust_tier : uint8_t {
  hybrid = 0,     ///< Community workers first; core-tier workers verify and fill gaps.
  core = 1,       ///< Only the platform's core-tier workers.
  community = 2,  ///< Only community workers (core-tier ones still verify).
};

template <>
std::span<const enum_name<inner_optimizer>> enum_names<inner_optimizer>() noexcept;
template <>
std::span<const enum_name<lr_schedule>> enum_names<lr_schedule>() noexcept;
template <>
std::span<const enum_name<trust_tier>> enum_names<trust_tier>() noexcept;

/// A training job as a user submits it. Training runs in DiLoCo-style rounds: each round
/// hands out `workers` assignments, each runs `local_steps` inner steps from the round's
/// parameters and returns its pseudo-gradient, which the outer optimizer (Nesterov momentum)
/// applies. The comments name each field's TOML key and accepted range.
/// The longest round deadline a spec may give ([round] deadline_s): a day. Whatever carries
/// an assignment or its re-computation waits at least this long for its answer.
inline constexpr double max_deadline_s = 86400.0;

struct job_spec {
  std::string name = "job";  ///< [job] name: 1..64 of [A-Za-z0-9._-].
  /// [job] workload: a built-in workload's name (required without [model]); with a [model]
  /// table, the model's label (default: model.name, else "model").
  std::string workload;
  int64_t rounds = 30;                             ///< [job] rounds: 1..100000.
  int64_t workers = 3;                             ///< [job] workers: per round, 1..1024.
  uint64_t seed = 1;                               ///< [job] seed: 0..2^63-1 (a TOML integer).
  inner_optimizer inner = inner_optimizer::adamw;  ///< [inner] optimizer: "adamw" | "sgd".
  int64_t local_steps = 50;                        ///< [inner] local_steps: 1..100000.
  int64_t batch_size = 128;                        ///< [inner] batch_size: 1..65536.
  double inner_lr = 1e-3;                          ///< [inner] lr: in [1e-30, 10].
  double weight_decay = 0.0;                   ///< [inner] weight_decay: in [0, 1); AdamW's only.
  lr_schedule schedule = lr_schedule::cosine;  ///< [inner] lr_schedule: "cosine" | "constant".
  math_precision precision =
      math_precision::fp32;     ///< [inner] precision: "fp32" | "tf32" | "bf16".
  double outer_lr = 0.5;        ///< [outer] lr: in [1e-30, 10].
  double outer_momentum = 0.8;  ///< [outer] momentum: in [0, 1).
  gflex::compression compression = gflex::compression::int8;  ///< [wire] compression.
  int64_t eval_every = 1;  ///< [eval] every: test accuracy every N rounds, 1..100000.
  /// [round] deadline_s, in [1, max_deadline_s]: an assignment not answered by then is
  /// reassigned (and withdrawn from its worker), and
  /// a round past it (counted from its first assignment out) closes as soon as a quorum of
  /// its results is in.
  double deadline_s = 120.0;
  /// [round] quorum, in (0, 1]: the fraction of `workers` results a round past its deadline
  /// may close with (1: every shard must be answered).
  double quorum = 1.0;
  /// [round] backup_after, in [0, 100]: an assignment running longer than this multiple of
  /// the round's median assignment time gets a backup copy on another worker; the first
  /// valid result wins. 0 turns backups off.
  double backup_after = 2.0;
  /// [trust] tier: "hybrid" | "core" | "community": where the job's assignments go.
  trust_tier tier = trust_tier::hybrid;
  /// [trust] tolerance, in [0.5, 1] (a job may loosen it, not tighten it: a result outside
  /// it flags its node on the whole platform): the largest relative L2 distance |claimed -
  /// recomputed| / |recomputed| a verified update may have. It covers the int8 wire format
  /// (0.6-0.8%) and the divergence of honest work on other arithmetic, which training amplifies in
  /// a few rounds: one unit in the last place at the start of an assignment moved a fashion-mlp
  /// update by up to 0.09, another OpenBLAS kernel by up to 0.30, a GPU's fp32 against a
  /// CPU's by 0.22 (docs/BENCHMARKS.md, "Re-computation on other arithmetic"). Sign flips,
  /// noise and replays land at 1.3-2.
  double tolerance = 0.5;
  /// [trust] norm_tolerance, in [0.05, 1] (loosened only, as tolerance): the largest relative
  /// difference of the norms of the claimed and the re-computed update. Honest divergence turns an
  /// update, it hardly scales it (at most 0.4% measured, where the distance was up to 0.30), so
  /// this is much tighter than `tolerance` and catches a scaled update that the distance alone
  /// would let through.
  double norm_tolerance = 0.05;
  /// [trust] norm_bound, in [1.5, 1000]: a result whose update norm is above norm_bound times
  /// the round's median norm, or below the median over norm_bound, is an outlier: re-computed
  /// before it is used, and left out of the round's mean meanwhile.
  double norm_bound = 4.0;
  /// [trust] min_cosine, in [-1, 1]: a result whose cosine similarity with the coordinate-wise
  /// median of its round is below this is an outlier too (sign flips, noise); -1 turns the
  /// check off.
  double min_cosine = 0.0;
  /// [trust] clip, 0 or in [1, 1000]: before averaging, updates are scaled down to at most clip
  /// times the round's median norm; 0 turns clipping off.
  double clip = 2.0;
  /// [trust] trim, in [0, 0.5): the fraction of values dropped at each end, coordinate by
  /// coordinate, before averaging (a trimmed mean); 0 is the plain mean.
  double trim = 0.0;
  /// [market] account: the ledger account that pays (user/NAME); empty: an unmetered job
  /// (no escrow, nobody paid).
  std::string account;
  /// [market] budget, credits in (0, 1e12] (stored in micro-credits): the most the job may
  /// spend; it pauses when the next round would pass it. Required with an account.
  int64_t budget = 0;
  /// [market] max_price, credits per device-hour in [0, 1e6] (micro-credits): the dearest
  /// worker the job takes. Required with an account; -1 (the default otherwise): any.
  int64_t max_price = -1;
  /// [market] min_reputation, in [0, 1]: community workers whose node scores lower are left out
  /// (the core refuses one above what a node can score, 51/52 by its default policy).
  double min_reputation = 0.0;
  /// [market] deadline_h, in [0, 100000]: hours after its submit (wall-clock time, the core's
  /// downtime included) after which an unfinished job fails; 0: none.
  double deadline_h = 0.0;

  /// [model]: a user-defined model (kernels/model_spec.hpp), kept as the TOML text of the
  /// table in a canonical form; empty for a built-in workload. This parser checks only that
  /// it is a table: the kernels plan it, and the client and the core refuse a job whose model
  /// does not plan.
  std::string model;
  /// [data] set: the data set a [model] trains on (built in: "fashion-mnist", "fortunes");
  /// required with [model], and only there (a built-in workload brings its data).
  std::string data_set;

  /// Field-by-field equality; floating-point fields compare exactly, as a round trip keeps them.
  bool operator==(const job_spec&) const = default;
};

/// The escrow a round of `spec` holds (micro-credits): every assignment paid at max_price for
/// at most the round's deadline, workers x max_price x deadline_s / 3600; 0 when unmetered.
int64_t round_escrow(const job_spec& spec);

/// What the market measures a node's rate of this work under: the workload, and for a
/// [model] job the digest of its model's text too (labels are the user's: two models of one
/// label, or of the default "model", mixed their rates and priced each by the other's).
std::string market_workload(const std::string& workload, const std::string& model_text);

/// The largest job spec accepted, in bytes (a full spec is about 1 KiB).
inline constexpr size_t max_job_spec_bytes = 64 * 1024;

/// Parses and validates a job spec from TOML text. Longer than max_job_spec_bytes is an error.
/// `source` names the text in messages (a file name). Every problem is errc::invalid_argument with
/// a message of the form
/// "<source>: <table>.<key>: <what is wrong>"; syntax errors give "<source>:<line>:<column>:".
/// Unknown tables and keys are errors, so that a misspelt key does not silently fall back to its
/// default. Missing keys other than job.workload take the defaults above.
expected<job_spec> parse_job_spec(std::string_view toml_text, const std::string& source);

/// The results a round past its deadline may close with: `quorum` of `workers`, rounded up,
/// at least 1. Rounded from what the fraction says, not from its binary value (0.07 x 100 is
/// 7.000000000000001 in doubles: 7 results, not 8).
int64_t quorum_results(const job_spec& spec);

/// Reads and parses a file; a missing or unreadable file is errc::io_error naming it.
expected<job_spec> load_job_spec(const std::filesystem::path& file);

/// Renders a spec as TOML with every key. For a spec that parse_job_spec would accept, parsing
/// the result gives back an equal spec (floating-point values are written in their shortest
/// exact form).
std::string to_toml(const job_spec& spec);

/// The TOML spelling of an optimizer ("adamw", "sgd").
const char* to_string(inner_optimizer optimizer) noexcept;

/// The TOML spelling of a schedule ("constant", "cosine").
const char* to_string(lr_schedule schedule) noexcept;

/// The TOML spelling of a tier ("hybrid", "core", "community").
const char* to_string(trust_tier tier) noexcept;

/// The inner learning rate of round `round` (0-based) of a job.
double inner_lr_at(const job_spec& spec, int64_t round);

}  // namespace gflex
