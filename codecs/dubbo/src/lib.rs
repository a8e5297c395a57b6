//! Meltemi dubbo codec (work in progress).
