//! memroute-runtime (placeholder)
