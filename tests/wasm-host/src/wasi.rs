//! The few `wasi_snapshot_preview1` functions a Rust `wasm32-wasip1` cdylib imports, behaving
//! like proxy-wasm-cpp-host's (`src/exports.cc`) but deterministic: stdout/stderr become log
//! lines, the clocks read the fake clock, `random_get` is a fixed-seed generator, the
//! environment and arguments are empty, and `proc_exit` traps.

use wasmtime::Linker;

use crate::abi::log_level;
use crate::memory::{read, write, write_u32, write_u64, Ctx, HostResult};
use crate::state::HostState;

const ESUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOTSUP: i32 = 58;

/// Largest `random_get` request honoured (proxy-wasm-cpp-host's default limit).
const RANDOM_GET_MAX_BYTES: u32 = 64 * 1024;

/// Adds the WASI preview1 functions to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    const WASI: &str = "wasi_snapshot_preview1";
    linker.func_wrap(WASI, "fd_write", fd_write)?;
    linker.func_wrap(WASI, "environ_get", |_: Ctx<'_>, _: i32, _: i32| ESUCCESS)?;
    linker.func_wrap(WASI, "environ_sizes_get", zero_sizes)?;
    linker.func_wrap(WASI, "args_get", |_: Ctx<'_>, _: i32, _: i32| ESUCCESS)?;
    linker.func_wrap(WASI, "args_sizes_get", zero_sizes)?;
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut c: Ctx<'_>, id: i32, _precision: i64, ret: i32| -> HostResult<i32> {
            // 0 = realtime, 1 = monotonic: both read the fake clock.
            if id != 0 && id != 1 {
                return Ok(ENOTSUP);
            }
            let now = c.data().now_nanos;
            Ok(if write_u64(&mut c, ret, now)? {
                ESUCCESS
            } else {
                EFAULT
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_res_get",
        |mut c: Ctx<'_>, id: i32, ret: i32| -> HostResult<i32> {
            if id != 0 && id != 1 {
                return Ok(ENOTSUP);
            }
            Ok(if write_u64(&mut c, ret, 1)? {
                ESUCCESS
            } else {
                EFAULT
            })
        },
    )?;
    linker.func_wrap(WASI, "random_get", random_get)?;
    linker.func_wrap(WASI, "sched_yield", || ESUCCESS)?;
    linker.func_wrap(WASI, "proc_exit", |code: i32| -> HostResult<()> {
        wasmtime::bail!("the module called WASI proc_exit({code})")
    })?;
    Ok(())
}

/// `environ_sizes_get` / `args_sizes_get`: no entries, no bytes.
fn zero_sizes(mut c: Ctx<'_>, count_ptr: i32, size_ptr: i32) -> HostResult<i32> {
    let ok = write_u32(&mut c, count_ptr, 0)? && write_u32(&mut c, size_ptr, 0)?;
    Ok(if ok { ESUCCESS } else { EFAULT })
}

/// Like proxy-wasm-cpp-host: fd 1 logs at info, fd 2 at error, one log line per call with one
/// trailing newline removed; other descriptors are `EBADF`.
fn fd_write(
    mut c: Ctx<'_>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten_ptr: i32,
) -> HostResult<i32> {
    let level = match fd {
        1 => log_level::INFO,
        2 => log_level::ERROR,
        _ => return Ok(EBADF),
    };
    let mut text = Vec::new();
    for i in 0..iovs_len as u32 {
        let iov = (iovs as u32).wrapping_add(i * 8) as i32;
        let Some(entry) = read(&mut c, iov, 8)? else {
            return Ok(EFAULT);
        };
        let buf = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let len = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let Some(bytes) = read(&mut c, buf as i32, len as i32)? else {
            return Ok(EFAULT);
        };
        text.extend_from_slice(&bytes);
    }
    let written = text.len() as u32;
    if text.last() == Some(&b'\n') {
        text.pop();
    }
    if written != 0 {
        let line = String::from_utf8_lossy(&text).into_owned();
        c.data_mut().logs.push((level, line));
    }
    Ok(if write_u32(&mut c, nwritten_ptr, written)? {
        ESUCCESS
    } else {
        EFAULT
    })
}

/// Fills the buffer from the VM's fixed-seed generator, so runs are reproducible.
fn random_get(mut c: Ctx<'_>, buf: i32, len: i32) -> HostResult<i32> {
    if len as u32 > RANDOM_GET_MAX_BYTES {
        return Ok(EINVAL);
    }
    let mut bytes = Vec::with_capacity(len as u32 as usize);
    while bytes.len() < len as u32 as usize {
        let word = c.data_mut().next_random().to_le_bytes();
        let take = (len as u32 as usize - bytes.len()).min(word.len());
        bytes.extend_from_slice(&word[..take]);
    }
    Ok(if write(&mut c, buf, &bytes)? {
        ESUCCESS
    } else {
        EFAULT
    })
}
