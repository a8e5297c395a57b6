//! Guest-memory helpers for host functions: bounds-checked reads and writes of the module's
//! exported `memory`, and copying host bytes into memory the module allocates itself.

use wasmtime::{Caller, Extern, Memory};

use crate::abi::status;
use crate::state::HostState;

/// The caller's type in every host function.
pub(crate) type Ctx<'a> = Caller<'a, HostState>;

/// Result of a host function: `Err` traps the VM.
pub(crate) type HostResult<T> = wasmtime::Result<T>;

/// The module's exported linear memory; a module without one cannot talk proxy-wasm.
pub(crate) fn memory(caller: &mut Ctx<'_>) -> HostResult<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => wasmtime::bail!("module does not export a linear memory named `memory`"),
    }
}

/// Reads `len` bytes at `ptr`, or `None` when the range is outside the memory.
pub(crate) fn read(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> HostResult<Option<Vec<u8>>> {
    let memory = memory(caller)?;
    let data = memory.data(&*caller);
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize);
    Ok(end.and_then(|end| data.get(start..end)).map(<[u8]>::to_vec))
}

/// Writes `bytes` at `ptr`; `false` when the range is outside the memory.
pub(crate) fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> HostResult<bool> {
    let memory = memory(caller)?;
    let data = memory.data_mut(&mut *caller);
    let start = ptr as u32 as usize;
    let target = start
        .checked_add(bytes.len())
        .and_then(|end| data.get_mut(start..end));
    Ok(match target {
        Some(target) => {
            target.copy_from_slice(bytes);
            true
        }
        None => false,
    })
}

/// Writes a little-endian `u32` (a wasm32 pointer or size).
pub(crate) fn write_u32(caller: &mut Ctx<'_>, ptr: i32, value: u32) -> HostResult<bool> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Writes a little-endian `u64`.
pub(crate) fn write_u64(caller: &mut Ctx<'_>, ptr: i32, value: u64) -> HostResult<bool> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Maps a write's success to a proxy-wasm status.
pub(crate) fn written(ok: bool) -> i32 {
    if ok {
        status::OK as i32
    } else {
        status::INVALID_MEMORY_ACCESS as i32
    }
}

/// Copies `bytes` into memory obtained from the module's `proxy_on_memory_allocate` and stores
/// the pointer and size at `ptr_ptr` / `size_ptr` (proxy-wasm-cpp-host `copyToPointerSize`).
/// Returns the proxy-wasm status: `InvalidMemoryAccess` if allocation or a write fails.
pub(crate) fn copy_out(
    caller: &mut Ctx<'_>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult<i32> {
    let Some(alloc) = caller
        .get_export("proxy_on_memory_allocate")
        .and_then(Extern::into_func)
    else {
        return Ok(status::INVALID_MEMORY_ACCESS as i32);
    };
    let alloc = alloc.typed::<i32, i32>(&*caller)?;
    let Ok(len) = i32::try_from(bytes.len()) else {
        return Ok(status::INVALID_MEMORY_ACCESS as i32);
    };
    let ptr = alloc.call(&mut *caller, len)?;
    if ptr == 0 || !write(caller, ptr, bytes)? {
        return Ok(status::INVALID_MEMORY_ACCESS as i32);
    }
    let ok = write_u32(caller, ptr_ptr, ptr as u32)? && write_u32(caller, size_ptr, len as u32)?;
    Ok(written(ok))
}
