//! Open mHealth / IEEE 1752.1 data points (MQTT ingest).
