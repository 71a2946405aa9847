//! Unit tests of the driver's batching and ordering rules, on in-memory TUN and UDP.
