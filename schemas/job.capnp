@0x9b7e4d21c6a8f03e;
# What the core persists per job in LMDB. The record and the checkpoint of a committed round
# are written in one transaction.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("gflex::schema");

enum JobState {
  queued @0;
  running @1;
  paused @2;
  done @3;
  failed @4;
  cancelled @5;
}

struct JobRecord {
  id @0 :Text;
  # The spec as submitted (TOML), re-parsed on restart.
  spec @1 :Text;
  state @2 :JobState;
  # Rounds committed so far; the checkpoint holds the parameters after this many rounds.
  round @3 :UInt64;
  testAccuracy @4 :Float64;
  trainLoss @5 :Float64;
  bytesSent @6 :UInt64;
  bytesReceived @7 :UInt64;
  # Seconds of running time before the last commit (so ETA survives restarts).
  elapsed @8 :Float64;
  detail @9 :Text;
  # Results that arrived after their round had closed (dropped, counted).
  lateResults @10 :UInt64;
  # Results refused by the immediate checks or by verification.
  rejectedResults @11 :UInt64;
  # Results re-computed on core-tier workers and found to match.
  verifiedResults @12 :UInt64;
  # Rounds undone because one of their results failed verification after they were applied.
  rollbacks @13 :UInt64;
  # Metered jobs, in micro-credits: the budget (spec plus top-ups), what was paid for
  # committed rounds, what escrow held at the last commit, the device time paid for, and
  # what that time would cost at the core's cloud reference price.
  budget @14 :Int64;
  creditsSpent @15 :Int64;
  creditsHeld @16 :Int64;
  deviceHours @17 :Float64;
  cloudCost @18 :Int64;
  # Who submitted the job and may see and change it: an account (user/NAME) or "operator".
  owner @19 :Text;
  # Results that did not look like the rest of their round and were re-computed (or, from
  # the core tier, used as they were) instead of being taken on trust.
  screenedResults @20 :UInt64;
  # Device seconds of the results the job used, and of the re-computations that checked
  # them: verification's share of the compute.
  computeSeconds @21 :Float64;
  recomputeSeconds @22 :Float64;
  # Mean loss per sample (per token for a language model) on the test split, nats.
  testLoss @23 :Float64;
  # Sampled results used without re-computation (no core-tier worker; --unverified accept).
  unverifiedResults @24 :UInt64;
  # The committed rounds, oldest first (thinned past 1,024 points): the job's curves.
  history @25 :List(RoundPoint);
  # Distinct nodes whose results the last committed round used.
  nodes @26 :UInt64;
  # The test samples each evaluation takes, of the test split's testSamples (fewer where all
  # would pass the core's evaluation budget).
  testedSamples @27 :UInt64;
  testSamples @28 :UInt64;
  # When it was submitted, in Unix seconds (0: before this was kept); deadline_h counts from
  # there.
  submittedUnix @29 :Int64;
  # The id its client gave the submission (empty: none): the same client asking again with
  # it, its first answer lost, is answered with this job instead of a second one.
  submission @30 :Text;
}

struct RoundPoint {
  round @0 :UInt64;
  trainLoss @1 :Float64;
  testLoss @2 :Float64;
  testAccuracy @3 :Float64;
  # Whether the test split was evaluated after this round (else the test figures are the
  # last evaluation's).
  evaluated @4 :Bool;
  elapsed @5 :Float64;
}
