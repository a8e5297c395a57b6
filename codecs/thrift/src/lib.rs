//! Meltemi thrift codec (work in progress).
