// `deltatune serve`'s HTTP layer over serve::Engine, in the conventions of
// Hugging Face's Text Embeddings Inference (TEI), so its clients work:
//
//   POST /predict        {"inputs": ..., "task" | "adapter_id": ..., "raw_scores", "truncate"}
//                        inputs: "text" | ["text a", "text b"] | [["t"], ["a", "b"], "t", ...];
//                        task: one name, or one per input of a batch.
//                        -> [{"label", "score"}, ...] sorted by score (a batch: one list per input)
//   GET  /health         200, or 503 while shutting down
//   GET  /info           model, dtype, limits, tasks
//   GET  /metrics        Prometheus text format
//   GET  /tasks          the loaded tasks
//   POST /tasks          {"name": ..., "path": DELTA_DIR} loads one while serving continues
//   DELETE /tasks/NAME   unloads one
//
// Errors are TEI-shaped, {"error": message, "error_type": type}: 422
// validation, 404 unknown task or route, 413 payload over the limit, 429 queue
// full, 503 shutting down, 500 inference failure.
#pragma once

#include <functional>
#include <string>

#include "deltatune/serve/engine.h"

namespace deltatune::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                              // 0: any free port
  std::size_t payload_limit = 2 * 1000 * 1000;  // bytes of a request body (TEI's default)
  unsigned http_threads = 64;                   // connections served at once
};

// Serves until SIGINT or SIGTERM, then refuses new requests (503), answers
// what was accepted and returns 0. Calls on_listening with the bound port.
// Throws deltatune::Error when the address cannot be bound.
int serve_http(Engine& engine, const HttpOptions& options,
               const std::function<void(int port)>& on_listening);

// Parses a /predict body into the engine's request (ServeError kValidation
// naming the field on anything malformed); *batched tells whether `inputs`
// was a batch (the response is then one list per input).
PredictRequest parse_predict_request(const std::string& body, bool* batched);

}  // namespace deltatune::serve
