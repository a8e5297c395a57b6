//! The `env.proxy_*` host functions a network filter uses, with Envoy 1.40's semantics
//! (proxy-wasm-cpp-host `src/exports.cc` + Envoy `source/extensions/common/wasm/context.cc`).
//! Every other `env` import is linked as a trap by [`crate::Module::load`].

use wasmtime::Linker;

use crate::abi::{metric_type, status, stream_type};
use crate::memory::{copy_out, read, write_u32, write_u64, written, Ctx, HostResult};
use crate::state::{BufferRef, ForeignCall, HostState};

/// Foreign functions that Envoy 1.40 registers and that this host accepts (recording the call).
const KNOWN_FOREIGN_FUNCTIONS: &[&str] = &[
    "set_envoy_filter_state",
    "clear_route_cache",
    "declare_property",
];

const OK: i32 = status::OK as i32;
const NOT_FOUND: i32 = status::NOT_FOUND as i32;
const BAD_ARGUMENT: i32 = status::BAD_ARGUMENT as i32;
const INVALID_MEMORY_ACCESS: i32 = status::INVALID_MEMORY_ACCESS as i32;

/// Adds the `env.proxy_*` functions to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    const ENV: &str = "env";
    linker.func_wrap(ENV, "proxy_log", proxy_log)?;
    linker.func_wrap(ENV, "proxy_get_log_level", |mut c: Ctx<'_>, ret: i32| {
        let level = c.data().log_level;
        Ok(written(write_u32(&mut c, ret, level)?))
    })?;
    linker.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        |mut c: Ctx<'_>, ret: i32| {
            let now = c.data().now_nanos;
            Ok(written(write_u64(&mut c, ret, now)?))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        |mut c: Ctx<'_>, period: i32| {
            c.data_mut().tick_period_ms = period as u32;
            OK
        },
    )?;
    linker.func_wrap(ENV, "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    linker.func_wrap(ENV, "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    linker.func_wrap(ENV, "proxy_get_buffer_status", proxy_get_buffer_status)?;
    linker.func_wrap(ENV, "proxy_get_property", proxy_get_property)?;
    linker.func_wrap(ENV, "proxy_set_property", proxy_set_property)?;
    linker.func_wrap(ENV, "proxy_continue_stream", proxy_continue_stream)?;
    linker.func_wrap(ENV, "proxy_close_stream", proxy_close_stream)?;
    linker.func_wrap(
        ENV,
        "proxy_set_effective_context",
        |mut c: Ctx<'_>, id: i32| {
            let state = c.data_mut();
            if state.context_exists(id as u32) {
                state.effective = id as u32;
                OK
            } else {
                BAD_ARGUMENT
            }
        },
    )?;
    // Envoy answers NotFound unless a root context returned false from on_done (VM shutdown),
    // which this host never does.
    linker.func_wrap(ENV, "proxy_done", || NOT_FOUND)?;
    linker.func_wrap(ENV, "proxy_define_metric", proxy_define_metric)?;
    linker.func_wrap(
        ENV,
        "proxy_increment_metric",
        |mut c: Ctx<'_>, id: i32, offset: i64| {
            c.data_mut().increment_metric(id as u32, offset) as i32
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_record_metric",
        |mut c: Ctx<'_>, id: i32, value: i64| {
            c.data_mut().record_metric(id as u32, value as u64) as i32
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_metric",
        |mut c: Ctx<'_>, id: i32, ret: i32| match c.data_mut().get_metric(id as u32) {
            Ok(value) => Ok(written(write_u64(&mut c, ret, value)?)),
            Err(status) => Ok(status as i32),
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_call_foreign_function",
        proxy_call_foreign_function,
    )?;
    Ok(())
}

fn proxy_log(mut c: Ctx<'_>, level: i32, ptr: i32, len: i32) -> HostResult<i32> {
    let Some(bytes) = read(&mut c, ptr, len)? else {
        return Ok(INVALID_MEMORY_ACCESS);
    };
    let message = String::from_utf8_lossy(&bytes).into_owned();
    c.data_mut().logs.push((level as u32, message));
    Ok(OK)
}

/// proxy-wasm-cpp-host `get_buffer_bytes`: the range is clipped to the buffer; an empty result
/// (empty buffer, `start` past the end, `max == 0`) is `Ok` with a null pointer and size 0.
fn proxy_get_buffer_bytes(
    mut c: Ctx<'_>,
    kind: i32,
    start: i32,
    max: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult<i32> {
    let state = c.data();
    let buffer = match state.buffer(kind as u32) {
        Ok(BufferRef::Missing) => return Ok(NOT_FOUND),
        Ok(buffer) => buffer,
        Err(status) => return Ok(status as i32),
    };
    let bytes = state.buffer_bytes(&buffer);
    // Envoy computes with 64-bit words: `start + max` never overflows for wasm32 arguments.
    let start = u64::from(start as u32);
    let end = (start + u64::from(max as u32)).min(bytes.len() as u64);
    let range = if start >= end {
        Vec::new()
    } else {
        bytes[start as usize..end as usize].to_vec()
    };
    if range.is_empty() {
        let ok = write_u32(&mut c, ptr_ptr, 0)? && write_u32(&mut c, size_ptr, 0)?;
        return Ok(written(ok));
    }
    c.data_mut().copied_in += range.len() as u64;
    copy_out(&mut c, &range, ptr_ptr, size_ptr)
}

/// proxy-wasm-cpp-host `get_buffer_status`: the buffer's length and flags 0; `NotFound` when
/// Envoy has no such buffer.
fn proxy_get_buffer_status(
    mut c: Ctx<'_>,
    kind: i32,
    size_ptr: i32,
    flags_ptr: i32,
) -> HostResult<i32> {
    let state = c.data();
    let buffer = match state.buffer(kind as u32) {
        Ok(BufferRef::Missing) => return Ok(NOT_FOUND),
        Ok(buffer) => buffer,
        Err(status) => return Ok(status as i32),
    };
    let len = state.buffer_bytes(&buffer).len() as u32;
    let ok = write_u32(&mut c, size_ptr, len)? && write_u32(&mut c, flags_ptr, 0)?;
    Ok(written(ok))
}

/// Envoy `Buffer::copyFrom`, see [`HostState::splice`].
fn proxy_set_buffer_bytes(
    mut c: Ctx<'_>,
    kind: i32,
    start: i32,
    size: i32,
    data_ptr: i32,
    data_len: i32,
) -> HostResult<i32> {
    let target = match c.data().buffer(kind as u32) {
        Ok(BufferRef::Missing) => return Ok(NOT_FOUND),
        Ok(BufferRef::Conn { id, write }) => Some((id, write)),
        Ok(BufferRef::Detached | BufferRef::ReadOnly(_)) => None,
        Err(status) => return Ok(status as i32),
    };
    let Some(data) = read(&mut c, data_ptr, data_len)? else {
        return Ok(INVALID_MEMORY_ACCESS);
    };
    let Some((id, write)) = target else {
        return Ok(BAD_ARGUMENT);
    };
    Ok(c.data_mut()
        .splice(id, write, start as u32, size as u32, &data) as i32)
}

/// Properties set by the test ([`crate::Host::set_property`]) or by the module; the path is
/// NUL-separated on the wire (a trailing NUL is ignored). Unknown paths are `NotFound`.
fn proxy_get_property(
    mut c: Ctx<'_>,
    path_ptr: i32,
    path_len: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult<i32> {
    let Some(path) = read(&mut c, path_ptr, path_len)? else {
        return Ok(INVALID_MEMORY_ACCESS);
    };
    let Some(value) = c.data().properties.get(property_key(&path)).cloned() else {
        return Ok(NOT_FOUND);
    };
    copy_out(&mut c, &value, ptr_ptr, size_ptr)
}

fn proxy_set_property(
    mut c: Ctx<'_>,
    path_ptr: i32,
    path_len: i32,
    value_ptr: i32,
    value_len: i32,
) -> HostResult<i32> {
    let (Some(path), Some(value)) = (
        read(&mut c, path_ptr, path_len)?,
        read(&mut c, value_ptr, value_len)?,
    ) else {
        return Ok(INVALID_MEMORY_ACCESS);
    };
    let key = property_key(&path).to_vec();
    c.data_mut().properties.insert(key, value);
    Ok(OK)
}

/// The map key of a wire path: the SDK joins parts with NUL; a trailing NUL is tolerated.
pub(crate) fn property_key(path: &[u8]) -> &[u8] {
    path.strip_suffix(&[0]).unwrap_or(path)
}

/// Envoy `continueStream`: Downstream resumes reading (counted here); Upstream is
/// `Unimplemented`; HTTP types are accepted and ignored; larger values are `BadArgument`.
fn proxy_continue_stream(mut c: Ctx<'_>, kind: i32) -> i32 {
    let state = c.data_mut();
    let id = state.active_context();
    match kind as u32 {
        stream_type::DOWNSTREAM => {
            if let Some(conn) = state.conns.get_mut(&id) {
                conn.continued += 1;
            }
            OK
        }
        stream_type::UPSTREAM => status::UNIMPLEMENTED as i32,
        stream_type::HTTP_REQUEST | stream_type::HTTP_RESPONSE => OK,
        _ => BAD_ARGUMENT,
    }
}

/// Envoy `closeStream`: Downstream/Upstream close the connection (recorded here).
fn proxy_close_stream(mut c: Ctx<'_>, kind: i32) -> i32 {
    let state = c.data_mut();
    let id = state.active_context();
    match kind as u32 {
        stream_type::DOWNSTREAM | stream_type::UPSTREAM => {
            if let Some(conn) = state.conns.get_mut(&id) {
                conn.closed_by_module = true;
            }
            OK
        }
        stream_type::HTTP_REQUEST | stream_type::HTTP_RESPONSE => OK,
        _ => BAD_ARGUMENT,
    }
}

fn proxy_define_metric(
    mut c: Ctx<'_>,
    kind: i32,
    name_ptr: i32,
    name_len: i32,
    ret_id: i32,
) -> HostResult<i32> {
    if kind as u32 > metric_type::HISTOGRAM {
        return Ok(BAD_ARGUMENT);
    }
    let Some(name) = read(&mut c, name_ptr, name_len)? else {
        return Ok(INVALID_MEMORY_ACCESS);
    };
    let name = String::from_utf8_lossy(&name).into_owned();
    let id = c.data_mut().define_metric(kind as u32, name);
    Ok(written(write_u32(&mut c, ret_id, id)?))
}

/// Records the call; the functions in [`KNOWN_FOREIGN_FUNCTIONS`] succeed with an empty result,
/// any other name is `NotFound` (as in Envoy for an unregistered name).
fn proxy_call_foreign_function(
    mut c: Ctx<'_>,
    name_ptr: i32,
    name_len: i32,
    args_ptr: i32,
    args_len: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult<i32> {
    let (Some(name), Some(args)) = (
        read(&mut c, name_ptr, name_len)?,
        read(&mut c, args_ptr, args_len)?,
    ) else {
        return Ok(INVALID_MEMORY_ACCESS);
    };
    let name = String::from_utf8_lossy(&name).into_owned();
    let known = KNOWN_FOREIGN_FUNCTIONS.contains(&name.as_str());
    let state = c.data_mut();
    let context_id = state.active_context();
    state.foreign_calls.push(ForeignCall {
        context_id,
        name,
        args,
    });
    if !known {
        return Ok(NOT_FOUND);
    }
    let ok = write_u32(&mut c, ptr_ptr, 0)? && write_u32(&mut c, size_ptr, 0)?;
    Ok(written(ok))
}

#[cfg(test)]
mod tests {
    use super::property_key;

    #[test]
    fn property_key_ignores_one_trailing_nul() {
        assert_eq!(property_key(b"source\0address"), b"source\0address");
        assert_eq!(property_key(b"source\0address\0"), b"source\0address");
    }
}
