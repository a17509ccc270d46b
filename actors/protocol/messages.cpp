#include "messages.hpp"

#include <caf/io/middleman.hpp>

#include "gflex/runtime/tensor_codec.hpp"

namespace gflex {

const std::vector<uint8_t>& shared_params::wire_bytes() const {
  std::call_once(packed_once_, [this] { packed_ = repack_tensor(bytes, tensor_packing::zstd); });
  return packed_;
}

void register_message_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<gpu_status>("gflex::gpu_status");
  cfg.add_message_type<std::vector<gpu_status>>("std::vector<gflex::gpu_status>");
  cfg.add_message_type<node_hello>("gflex::node_hello");
  cfg.add_message_type<node_welcome>("gflex::node_welcome");
  cfg.add_message_type<client_welcome>("gflex::client_welcome");
  cfg.add_message_type<model_part>("gflex::model_part");
  cfg.add_message_type<assignment>("gflex::assignment");
  cfg.add_message_type<assignment_result>("gflex::assignment_result");
  cfg.add_message_type<worker_slot>("gflex::worker_slot");
  cfg.add_message_type<std::vector<worker_slot>>("std::vector<gflex::worker_slot>");
  cfg.add_message_type<verify_request>("gflex::verify_request");
  cfg.add_message_type<acquire_reply>("gflex::acquire_reply");
  cfg.add_message_type<posting>("gflex::posting");
  cfg.add_message_type<std::vector<posting>>("std::vector<gflex::posting>");
  cfg.add_message_type<account_info>("gflex::account_info");
  cfg.add_message_type<data_set_info>("gflex::data_set_info");
  cfg.add_message_type<std::vector<data_set_info>>("std::vector<gflex::data_set_info>");
  cfg.add_message_type<data_part>("gflex::data_part");
  cfg.add_message_type<ledger_report>("gflex::ledger_report");
  cfg.add_message_type<store_batch>("gflex::store_batch");
  cfg.add_message_type<job_status>("gflex::job_status");
  cfg.add_message_type<std::vector<job_status>>("std::vector<gflex::job_status>");
  cfg.add_message_type<node_status>("gflex::node_status");
  cfg.add_message_type<std::vector<node_status>>("std::vector<gflex::node_status>");
  cfg.add_message_type<std::vector<uint8_t>>("std::vector<uint8_t>");
  cfg.add_message_type<std::vector<std::vector<uint8_t>>>("std::vector<std::vector<uint8_t>>");
  cfg.add_message_type<std::vector<std::string>>("std::vector<std::string>");
  cfg.add_message_type<std::vector<uint64_t>>("std::vector<uint64_t>");
  cfg.add_message_type<join_token_record>("gflex::join_token_record");
  cfg.add_message_type<std::vector<join_token_record>>("std::vector<gflex::join_token_record>");
}

void configure_actor_system(caf::actor_system_config& cfg) {
  register_message_types(cfg);
  cfg.add_error_category(error_category,
                         [](uint8_t code, caf::atom_value, const caf::message& context) {
                           std::string out = to_string(static_cast<errc>(code));
                           if (context.match_elements<std::string>())
                             out += ": " + context.get_as<std::string>(0);
                           return out;
                         });
  cfg.set("scheduler.max-throughput", size_t{100});
  // A link that goes silent (a laptop that moved to another network, a core's host gone
  // without a reset) is closed once nothing came over it for link_silence: TCP alone gives
  // up after about 15 minutes, and meanwhile a node thought itself connected and the core
  // held its connection. Both ends send a heartbeat every link_heartbeat. CAF sees a message
  // once it has arrived whole, so the bound is above what the largest one a slow link
  // carries takes (a payload chunk or a shard, asked for with a 120 s timeout).
  cfg.set("middleman.heartbeat-interval", caf::timespan{link_heartbeat});
  cfg.set("middleman.connection-timeout", caf::timespan{link_silence});
  cfg.load<caf::io::middleman>();
}

caf::error to_caf(const error& e) {
  return caf::error(static_cast<uint8_t>(e.code()), error_category, caf::make_message(e.message()));
}

error from_caf(const caf::error& e, caf::actor_system* sys) {
  // An error of no code (a peer's answer) has no category: CAF 0.17 reads it through a null
  // pointer.
  if (!e) return error(errc::io_error, "an error of no code");
  if (e.category() == error_category) {
    std::string message;
    if (e.context().match_elements<std::string>()) message = e.context().get_as<std::string>(0);
    return error(static_cast<errc>(e.code()), message);
  }
  if (e.category() == caf::atom("system")) {
    auto code = static_cast<caf::sec>(e.code());
    switch (code) {
      case caf::sec::request_timeout:
        return error(errc::io_error, "the request timed out");
      case caf::sec::request_receiver_down:
        return error(errc::io_error, "the receiver is gone");
      default:
        break;
    }
  }
  return error(errc::io_error, sys != nullptr ? sys->render(e) : caf::to_string(e));
}

}  // namespace gflex
