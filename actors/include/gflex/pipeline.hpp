#pragma once
/// @file
/// Training pipelines as actor graphs: a user composes typed stages (a source, map, filter,
/// flat_map, batch, shuffle, a distributed `train` job, sinks) and runs them; every stage is
/// an actor of its own with a bounded input window, and the whole graph is supervised.
///
///   gflex::pipeline::graph g;
///   auto lines = g.source<std::string>("read", read_line);        // std::optional<T>(position)
///   auto tokens = lines.flat_map<sample>("tokenize", cut_windows); // f(const T&, emit)
///   tokens.shuffle("shuffle", 4096, 7).batch("batch", 256).sink("count", count);
///   auto report = g.run();
///
/// Flow control is credit-based: a stage may have at most `window` items from each producer
/// instance that it has not finished with (its outputs sent); a producer without credit
/// stops (a source stops generating), so a slow stage slows everything before it and memory
/// stays bounded by the windows, plus what one input makes at once: a flat_map's outputs
/// for one input are all held until sent. Items move between stages in one process without
/// copies.
///
/// Supervision: a stage whose function throws, or whose actor dies, is restarted with a
/// fresh copy of its function: its producers send it again every item it had not finished,
/// and a source resumes at its last checkpointed position (the position after the last item
/// it sent); a producer's replacement adopts what its predecessor had sent and its consumers
/// had not finished. After `restarts` restarts the pipeline fails with the stage's error.
/// Each item is processed to completion exactly once through any sequence of failures, as
/// long as a producer and its consumer do not die at the same moment. A sink on a worker
/// process is the exception: its function's effects and its acknowledgement are two steps
/// across the network, and an item whose worker died between them reaches a replacement
/// again (at least once: make such sinks idempotent).
///
/// Worker processes: a stage marked `on_workers` runs in processes of the same program on
/// the user's own machines (never on volunteers, who run no user code), started with
/// graph::join and admitted with a shared token; items crossing a process boundary are
/// encoded with gflex::pipeline::codec<T> (built in for numbers, strings, vectors and
/// sample_batch; a user specializes it for other types). When such a process is lost, its
/// stage instances are restarted on another worker (or, with none left, in the pipeline's
/// own process) with the same guarantees as above.
///
/// Types are checked at compile time (a stage's function must accept what the stage before
/// it produces), and graphs are acyclic by construction: a stage reads a stream that exists
/// already. Everything here is header-only to use; the actors run in libgflex, and no CAF
/// header is included.

#include <any>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "gflex/gflex.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex::pipeline {

/// How a stage runs.
struct stage_options {
  /// Parallel instances of a map, filter or flat_map stage (items go to whichever has
  /// credit; their order is not kept). Other stages run one instance.
  int instances = 1;
  /// Items from each producer instance this stage may hold unfinished (its input window).
  /// A batch stage's window is at least its batch size, a shuffle's at least its buffer.
  int window = 64;
  /// Restarts allowed before a failure of this stage fails the pipeline. Instances lost with
  /// a worker process are restarted without counting: the process held several of them.
  int restarts = 3;
  /// Runs on a thread of its own (for functions that block: file or network I/O, long
  /// computations); otherwise on the shared scheduler. Sources and train always do.
  bool blocking = false;
  /// Runs in the pipeline's worker processes (run_options::workers) instead of the
  /// pipeline's own; instances are spread over them. The stage's input and output types
  /// need a codec. A source or train stage runs in the pipeline's process: run() refuses
  /// either on workers (a source's position and its items reach the pipeline in separate
  /// messages, and a worker lost between them would repeat an item).
  bool on_workers = false;
};

/// What a stage did, in the run's report.
struct stage_report {
  std::string name;
  std::string kind;  ///< "source", "map", "filter", "flat_map", "batch", "shuffle", ...
  int instances = 1;
  /// Inputs finished (each once, though one sent again to a replacement arrives twice), and
  /// items sent on.
  int64_t items_in = 0;
  int64_t items_out = 0;
  int restarts = 0;
  /// The most items this stage held sent but unfinished by its consumers at once (per
  /// consumer instance): what backpressure bounds.
  int64_t peak_unfinished = 0;
};

struct run_report {
  std::vector<stage_report> stages;
  double elapsed_s = 0.0;
  int workers_joined = 0;  ///< Worker processes that joined (run_options::workers).
  int workers_lost = 0;    ///< Of those, lost while the pipeline ran.
  const stage_report* stage(const std::string& name) const {
    for (const auto& s : stages)
      if (s.name == name) return &s;
    return nullptr;
  }
};

/// Samples for the `train` stage: `rows` samples of `sample_values` values each (pixels, or
/// token ids as floats for a token model) and one label per sample.
struct sample_batch {
  std::vector<float> features;
  std::vector<int32_t> labels;
  int64_t sample_values = 0;
  int64_t rows() const { return static_cast<int64_t>(labels.size()); }
};

/// What the `train` stage emits as its job commits rounds: the job's status and the parameters
/// of its newest committed round (in the model's layout order). The core keeps a job's newest
/// parameters only, so rounds committed between two polls come as one update, the newest
/// (`status.history` holds every round's loss and accuracy).
struct round_update {
  job_status status;
  std::shared_ptr<const std::vector<float>> parameters;
};

/// The distributed job a `train` stage runs. The stage gathers the samples it is fed (up to
/// `max_samples`; every `test_every`-th batch is held out), pushes them to the core as the
/// data set `data_set` (content-addressed shards), submits `spec_toml` with `[data] set`
/// naming it, and polls the job every `poll`, emitting a round_update whenever rounds were
/// committed since the last one, until the job ends; a job that ends other than "done" fails
/// the stage with its detail. Once it has pushed, the stages before it stop (an endless
/// source too): the run ends with the job.
struct train_options {
  gflex::client* client = nullptr;  ///< The core to run on (an embedded cluster's or a remote one).
  std::string spec_toml;            ///< The job spec, without a [data] table.
  std::string data_set = "pipeline";
  int64_t max_samples = 1 << 20;
  int test_every = 10;
  int64_t classes = 256;  ///< Labels are below this (the vocabulary for tokens).
  bool tokens = true;     ///< Samples are token ids.
  std::chrono::milliseconds poll{200};
};

/// How an item of type T crosses a process boundary. Specialize it for a type of your own:
///   template <> struct gflex::pipeline::codec<my_type> {
///     static void encode(const my_type& v, std::string& out);  // appends
///     static my_type decode(std::string_view& in);             // consumes; throws if malformed
///   };
template <class T, class = void>
struct codec;

/// Whether T has a codec (an item of T may cross processes).
template <class T>
concept has_codec = requires(const T& v, std::string& out, std::string_view& in) {
  codec<T>::encode(v, out);
  { codec<T>::decode(in) } -> std::same_as<T>;
};

namespace detail {
inline void need(std::string_view in, size_t n) {
  if (in.size() < n) throw std::runtime_error("pipeline: a malformed item (truncated)");
}
}  // namespace detail

template <class T>
struct codec<T, std::enable_if_t<std::is_arithmetic_v<T>>> {
  static void encode(const T& v, std::string& out) {
    out.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  static T decode(std::string_view& in) {
    detail::need(in, sizeof(T));
    T v;
    std::memcpy(&v, in.data(), sizeof v);
    in.remove_prefix(sizeof v);
    return v;
  }
};

// bool is arithmetic, but a byte other than 0 or 1 is no bool: checked.
template <>
struct codec<bool> {
  static void encode(const bool& v, std::string& out) { out.push_back(v ? '\1' : '\0'); }
  static bool decode(std::string_view& in) {
    detail::need(in, 1);
    const char c = in.front();
    if (c != '\0' && c != '\1') throw std::runtime_error("pipeline: a malformed item (a bool)");
    in.remove_prefix(1);
    return c == '\1';
  }
};

template <>
struct codec<std::string> {
  static void encode(const std::string& v, std::string& out) {
    codec<uint64_t>::encode(v.size(), out);
    out += v;
  }
  static std::string decode(std::string_view& in) {
    const uint64_t n = codec<uint64_t>::decode(in);
    detail::need(in, n);
    std::string v(in.substr(0, n));
    in.remove_prefix(n);
    return v;
  }
};

template <class T>
requires has_codec<T>
struct codec<std::vector<T>> {
  // Copied as bytes: numbers, not bool (std::vector<bool> packs bits and has no data()).
  static constexpr bool contiguous = std::is_arithmetic_v<T> && !std::is_same_v<T, bool>;
  static void encode(const std::vector<T>& v, std::string& out) {
    codec<uint64_t>::encode(v.size(), out);
    if constexpr (contiguous)
      out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
    else
      for (const auto& x : v) codec<T>::encode(x, out);
  }
  static std::vector<T> decode(std::string_view& in) {
    const uint64_t n = codec<uint64_t>::decode(in);
    std::vector<T> v;
    if constexpr (contiguous) {
      if (n > in.size() / sizeof(T))
        throw std::runtime_error("pipeline: a malformed item (truncated)");
      v.resize(n);
      std::memcpy(v.data(), in.data(), n * sizeof(T));
      in.remove_prefix(n * sizeof(T));
    } else {
      detail::need(in, n);  // every element takes a byte at least
      v.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.push_back(codec<T>::decode(in));
    }
    return v;
  }
};

template <>
struct codec<sample_batch> {
  static void encode(const sample_batch& v, std::string& out) {
    codec<std::vector<float>>::encode(v.features, out);
    codec<std::vector<int32_t>>::encode(v.labels, out);
    codec<int64_t>::encode(v.sample_values, out);
  }
  static sample_batch decode(std::string_view& in) {
    sample_batch v;
    v.features = codec<std::vector<float>>::decode(in);
    v.labels = codec<std::vector<int32_t>>::decode(in);
    v.sample_values = codec<int64_t>::decode(in);
    return v;
  }
};

template <class T>
class stream;

namespace detail {

/// Items travel as shared, immutable values: a producer keeps the same object it sends until
/// the consumer has finished with it, so that a restarted consumer gets it again.
using item = std::shared_ptr<const std::any>;

template <class T>
item make_item(T&& value) {
  return std::make_shared<const std::any>(std::in_place_type<std::decay_t<T>>,
                                          std::forward<T>(value));
}

template <class T>
const T& get(const item& i) {
  return *std::any_cast<std::decay_t<T>>(i.get());
}

enum class stage_kind { source, map, filter, flat_map, batch, shuffle, sink, train };

/// A stage's generator (sources): the item at `position`, or none at the end.
using generator = std::function<std::optional<item>(int64_t position)>;
/// A stage's transformation: one input, any number of outputs (appended).
using transform = std::function<void(const item& in, std::vector<item>& out)>;
/// A batch stage's assembly of inputs into one output.
using assemble = std::function<item(const std::vector<item>& inputs)>;

struct stage_def {
  std::string name;
  stage_kind kind = stage_kind::map;
  stage_options options;
  int input = -1;  ///< The stage it reads (-1: a source).
  // Each (re)start calls a factory, so that a restarted stage has a fresh copy of the user's
  // function and no state the failure left behind.
  std::function<generator()> make_generator;
  std::function<transform()> make_transform;
  assemble assemble_batch;
  size_t size = 0;    ///< batch: samples per batch; shuffle: buffer.
  uint64_t seed = 0;  ///< shuffle
  train_options train;
  /// The stage's output across a process boundary; empty when its type has no codec.
  std::function<std::string(const item&)> encode;
  std::function<item(std::string_view)> decode;
  /// The output's type (typeid's name), for the check that a worker process builds the same
  /// graph: one whose stage returned another type decoded the bytes as that.
  std::string output_type;
};

/// A graph's stages, shared by the graph and the streams it handed out: a stream follows its
/// graph when the graph is moved (it held the graph's address, and a graph returned from a
/// function or moved into a struct left its streams adding stages to freed memory).
using stage_list = std::vector<stage_def>;

inline int add_stage(stage_list& stages, stage_def def) {
  stages.push_back(std::move(def));
  return static_cast<int>(stages.size() - 1);
}

template <class T>
void set_codec(stage_def& d) {
  d.output_type = typeid(T).name();
  if constexpr (has_codec<T>) {
    d.encode = [](const item& i) {
      std::string out;
      codec<T>::encode(get<T>(i), out);
      return out;
    };
    d.decode = [](std::string_view in) {
      T v = codec<T>::decode(in);
      if (!in.empty()) throw std::runtime_error("pipeline: a malformed item (bytes left over)");
      return make_item<T>(std::move(v));
    };
  }
}

}  // namespace detail

/// Fault injection while a pipeline runs: kills a stage instance's actor, as a crash would.
/// The pipeline is expected to recover (tests use it). The handle given to on_running may be
/// used, from any thread, until run() returns; a kill after the run's end returns false.
class running {
 public:
  virtual ~running() = default;
  /// Kills instance `instance` of stage `name`; false when no such stage is running.
  virtual bool kill(const std::string& name, int instance = 0) = 0;
};

/// How a pipeline runs.
struct run_options {
  /// Called once every stage has started (has an actor, on a worker process too), with a
  /// handle for fault injection; not called for a run that ends before that (its deadline
  /// passed, or a stage failed past its restarts, while the stages were placed).
  std::function<void(running&)> on_running;
  /// Counted from the call of run(), on_running and the workers' joining included: stages
  /// still unfinished when it passes are killed (zero: no deadline). run() still returns only
  /// once every stage function has returned: one blocked in a call of its own (I/O without a
  /// timeout) holds it until that call returns.
  std::chrono::milliseconds deadline{};
  /// Worker processes to wait for before starting (graph::join): stages marked on_workers
  /// run in them. Zero: everything runs in this process.
  int workers = 0;
  /// Where workers join: an address of this machine and a port (0: any free one, told to
  /// on_listening). The link is not encrypted: keep it on the user's own network.
  std::string listen_host = "127.0.0.1";
  uint16_t port = 0;
  std::function<void(uint16_t port)> on_listening;
  /// The secret a worker must present (at least 16 characters).
  std::string token;
  /// How long to wait for the workers before giving up (errc::unavailable).
  std::chrono::milliseconds join_timeout{30000};
};

/// How a worker process joins a pipeline.
struct join_options {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string token;
  /// How long join() tries to reach the pipeline (which may not listen yet), also at an
  /// address whose packets are dropped; each try waits at least 100 ms for an answer.
  std::chrono::milliseconds connect_timeout{10000};
};

/// What a worker process did.
struct join_report {
  int instances = 0;  ///< Stage instances it ran.
};

/// A pipeline under construction: stages added through the streams it hands out.
class graph {
 public:
  /// A source: `generate(position)` returns the item at that position (0, 1, ...) or
  /// std::nullopt at the end. After a restart it is asked again from its last checkpoint, so
  /// it must give the same item for the same position.
  template <class T, class F>
  requires std::invocable<F&, int64_t> &&
      std::same_as<std::invoke_result_t<F&, int64_t>, std::optional<T>>
          stream<T> source(std::string name, F generate, stage_options options = {});

  /// Runs the pipeline to its end (every item through every stage) or its failure: a stage
  /// that failed more often than its restarts allow, named in the error (errc::stage_failed).
  /// `on_running` is called once every stage has started, with a handle for fault
  /// injection (see run_options::on_running). With a `deadline`, stages still unfinished
  /// when it passes are killed and the run is errc::unavailable naming them. A stream read by
  /// two stages, a stage without a name or two of the same name, and options out of range
  /// are errc::invalid_argument before anything starts.
  expected<run_report> run(const std::function<void(running&)>& on_running = {},
                           std::chrono::milliseconds deadline = {}) const;
  /// The same, with worker processes when `options.workers` > 0: the pipeline listens,
  /// waits for that many processes of this program to join with its token, and runs its
  /// on_workers stages in them. A worker process that joins later serves restarts.
  expected<run_report> run(const run_options& options) const;

  /// Serves this graph's on_workers stages for a pipeline that another process of this
  /// program runs (the same graph, built by the same code: a different one is refused).
  /// Returns when that pipeline ends; an error when it cannot join (a wrong token, a
  /// different graph, nobody listening) or the pipeline's process is lost.
  expected<join_report> join(const join_options& options) const;

  /// The stages, in the order they were added (for the runtime and for inspection).
  const std::vector<detail::stage_def>& stages() const { return *stages_; }

  graph() = default;
  /// A copy has stages of its own: the original's streams add to the original.
  graph(const graph& other) : stages_(std::make_shared<detail::stage_list>(*other.stages_)) {}
  graph& operator=(const graph& other) {
    if (this != &other) stages_ = std::make_shared<detail::stage_list>(*other.stages_);
    return *this;
  }
  /// A move takes the stages, and the streams handed out go on adding to them; the graph
  /// moved from is empty.
  graph(graph&& other) noexcept
      : stages_(std::exchange(other.stages_, std::make_shared<detail::stage_list>())) {}
  graph& operator=(graph&& other) noexcept {
    if (this != &other)
      stages_ = std::exchange(other.stages_, std::make_shared<detail::stage_list>());
    return *this;
  }

 private:
  template <class T>
  friend class stream;
  std::shared_ptr<detail::stage_list> stages_ = std::make_shared<detail::stage_list>();
};

/// The output of a stage: items of type T. Each stream feeds at most one stage (run()
/// refuses a graph where two read the same one).
template <class T>
class stream {
 public:
  using value_type = T;

  /// One output per input: `f(const T&)`.
  template <class F>
  requires std::invocable<F&, const T&> &&
      (!std::is_void_v<std::invoke_result_t<F&, const T&>>)auto map(
          std::string name, F f, stage_options options = {}) const
      -> stream<std::decay_t<std::invoke_result_t<F&, const T&>>> {
    using U = std::decay_t<std::invoke_result_t<F&, const T&>>;
    detail::stage_def d = def(std::move(name), detail::stage_kind::map, options);
    d.make_transform = [f] {
      return detail::transform(
          [g = f](const detail::item& in, std::vector<detail::item>& out) mutable {
            out.push_back(detail::make_item<U>(g(detail::get<T>(in))));
          });
    };
    return stream<U>(g_, detail::add_stage(*g_, std::move(d)));
  }

  /// Keeps the inputs for which `keep(const T&)` is true.
  template <class F>
  requires std::predicate<F&, const T&> stream<T> filter(std::string name, F keep,
                                                         stage_options options = {})
  const {
    detail::stage_def d = def(std::move(name), detail::stage_kind::filter, options);
    d.make_transform = [keep] {
      return detail::transform(
          [k = keep](const detail::item& in, std::vector<detail::item>& out) mutable {
            if (k(detail::get<T>(in))) out.push_back(in);
          });
    };
    return stream<T>(g_, detail::add_stage(*g_, std::move(d)));
  }

  /// Any number of outputs per input: `f(const T&, emit)` calls `emit(U)` for each.
  template <class U, class F>
  requires std::invocable < F&, const T&, const std::function<void(U)>
  & > stream<U> flat_map(std::string name, F f, stage_options options = {}) const {
    detail::stage_def d = def(std::move(name), detail::stage_kind::flat_map, options);
    d.make_transform = [f] {
      return detail::transform(
          [g = f](const detail::item& in, std::vector<detail::item>& out) mutable {
            const std::function<void(U)> emit = [&out](U u) {
              out.push_back(detail::make_item<U>(std::move(u)));
            };
            g(detail::get<T>(in), emit);
          });
    };
    return stream<U>(g_, detail::add_stage(*g_, std::move(d)));
  }

  /// Groups `n` inputs into a vector (the last one may be shorter).
  stream<std::vector<T>> batch(std::string name, size_t n, stage_options options = {}) const {
    detail::stage_def d = def(std::move(name), detail::stage_kind::batch, options);
    d.size = n;
    d.assemble_batch = [](const std::vector<detail::item>& inputs) {
      std::vector<T> out;
      out.reserve(inputs.size());
      for (const auto& i : inputs) out.push_back(detail::get<T>(i));
      return detail::make_item<std::vector<T>>(std::move(out));
    };
    return stream<std::vector<T>>(g_, detail::add_stage(*g_, std::move(d)));
  }

  /// Emits its inputs in a pseudo-random order: holds `buffer` of them and sends a random
  /// one for each that arrives (the rest, shuffled, at the end). Deterministic per `seed`
  /// for the same arrival order.
  stream<T> shuffle(std::string name, size_t buffer, uint64_t seed,
                    stage_options options = {}) const {
    detail::stage_def d = def(std::move(name), detail::stage_kind::shuffle, options);
    d.size = buffer;
    d.seed = seed;
    return stream<T>(g_, detail::add_stage(*g_, std::move(d)));
  }

  /// Consumes the stream: `f(const T&)` for each item (writing files, metrics, ...).
  template <class F>
  requires std::invocable<F&, const T&>
  void sink(std::string name, F f, stage_options options = {}) const {
    detail::stage_def d = def(std::move(name), detail::stage_kind::sink, options);
    d.make_transform = [f] {
      return detail::transform([g = f](const detail::item& in, std::vector<detail::item>&) mutable {
        g(detail::get<T>(in));
      });
    };
    detail::add_stage(*g_, std::move(d));
  }

  /// A distributed job trained on this stream's samples (see train_options); emits a
  /// round_update with the newest parameters as rounds are committed.
  stream<round_update> train(std::string name, train_options train,
                             stage_options options = {}) const {
    static_assert(std::is_same_v<T, sample_batch>,
                  "train reads a stream of gflex::pipeline::sample_batch");
    detail::stage_def d = def(std::move(name), detail::stage_kind::train, options);
    d.options.blocking = true;
    d.train = std::move(train);
    return stream<round_update>(g_, detail::add_stage(*g_, std::move(d)));
  }

 private:
  friend class graph;
  template <class>
  friend class stream;
  stream(std::shared_ptr<detail::stage_list> g, int stage) : g_(std::move(g)), stage_(stage) {
    detail::set_codec<T>((*g_)[static_cast<size_t>(stage)]);
  }
  detail::stage_def def(std::string name, detail::stage_kind kind,
                        const stage_options& options) const {
    detail::stage_def d;
    d.name = std::move(name);
    d.kind = kind;
    d.options = options;
    d.input = stage_;
    return d;
  }
  std::shared_ptr<detail::stage_list> g_;  ///< Its graph's stages.
  int stage_;
};

template <class T, class F>
requires std::invocable<F&, int64_t> &&
    std::same_as<std::invoke_result_t<F&, int64_t>, std::optional<T>>
        stream<T> graph::source(std::string name, F generate, stage_options options) {
  detail::stage_def d;
  d.name = std::move(name);
  d.kind = detail::stage_kind::source;
  d.options = options;
  d.options.blocking = true;
  d.make_generator = [generate] {
    return detail::generator(
        [g = generate](int64_t position) mutable -> std::optional<detail::item> {
          auto v = g(position);
          if (!v) return std::nullopt;
          return detail::make_item<T>(std::move(*v));
        });
  };
  return stream<T>(stages_, detail::add_stage(*stages_, std::move(d)));
}

}  // namespace gflex::pipeline
