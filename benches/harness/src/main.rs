//! pd-bench: the end-to-end throughput harness (being written; see benches/harness/README.md).
fn main() {}
