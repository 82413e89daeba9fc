//! Collectives between the processes of a data-parallel run: all-reduce (sum), broadcast and
//! barrier over a list of tensors, run by PyTorch's own engine, c10d: a `TCPStore` for the
//! rendezvous and a Gloo process group for the transfers (CPU tensors, and CUDA tensors, copied
//! through host memory). The small C++ shim (`csrc/collectives.cpp`) builds the group
//! and flattens each call's tensors into one buffer; it catches every C++ exception, which
//! comes back as [`CoreError::Collective`], never as an abort.
//!
//! A group is set up from the environment a launcher gives each process, as `torchrun` does:
//! `RANK`, `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` ([`Collectives::from_env`]); without
//! them the process runs alone ([`Collectives::single`]) and every collective is a no-op.
//!
//! One of the four modules with `unsafe` code (with `host`, `device_memory` and `cuda_link`):
//! the calls into the shim, which take the group's handle and pointers to live tensors.

use std::ffi::{c_void, CString};
use std::ptr::NonNull;
use std::time::Duration;

use tch::Tensor;

use crate::CoreError;

/// The variable naming this process's rank, 0 to `WORLD_SIZE - 1`.
pub const RANK_VAR: &str = "RANK";
/// The variable naming how many processes the run has.
pub const WORLD_SIZE_VAR: &str = "WORLD_SIZE";
/// The variable naming the host of rank 0, where the rendezvous store listens.
pub const MASTER_ADDR_VAR: &str = "MASTER_ADDR";
/// The variable naming the rendezvous store's TCP port on rank 0's host.
pub const MASTER_PORT_VAR: &str = "MASTER_PORT";

/// How long a collective waits for its peers before it fails (torch.distributed's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// This process's place in a data-parallel run and the group that joins it to the others.
#[derive(Debug)]
pub struct Collectives {
    rank: usize,
    world_size: usize,
    group: Option<Group>,
}

impl Collectives {
    /// A process on its own: rank 0 of 1, every collective a no-op.
    pub fn single() -> Self {
        Collectives {
            rank: 0,
            world_size: 1,
            group: None,
        }
    }

    /// The group the launcher's environment describes (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
    /// `MASTER_PORT`), or [`Collectives::single`] when `WORLD_SIZE` is unset or 1. Blocks
    /// until every rank has joined, or fails after [`DEFAULT_TIMEOUT`].
    pub fn from_env() -> Result<Self, CoreError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                CoreError::Collective(format!(
                    "{WORLD_SIZE_VAR} is set, so {name} must be too (a launcher such as `dp-train train --workers N` or torchrun sets all four)"
                ))
            })
        };
        let Ok(world_size) = std::env::var(WORLD_SIZE_VAR) else {
            return Ok(Collectives::single());
        };
        let world_size = parse_count(WORLD_SIZE_VAR, &world_size)?;
        if world_size == 1 {
            return Ok(Collectives::single());
        }
        let rank = parse_count(RANK_VAR, &var(RANK_VAR)?)?;
        let address = var(MASTER_ADDR_VAR)?;
        let port = var(MASTER_PORT_VAR)?;
        let port: u16 = port.parse().map_err(|_| {
            CoreError::Collective(format!("{MASTER_PORT_VAR}={port} is not a TCP port number"))
        })?;
        Collectives::connect(&address, port, rank, world_size, DEFAULT_TIMEOUT)
    }

    /// Joins the group of `world_size` processes whose rendezvous store listens on
    /// `address:port` (rank 0 opens it). Blocks until every rank has joined, or fails after
    /// `timeout`, which also bounds each later collective's wait for its peers.
    pub fn connect(
        address: &str,
        port: u16,
        rank: usize,
        world_size: usize,
        timeout: Duration,
    ) -> Result<Self, CoreError> {
        if world_size == 0 || rank >= world_size {
            return Err(CoreError::Collective(format!(
                "rank {rank} is not in a group of {world_size} processes"
            )));
        }
        if world_size == 1 {
            return Ok(Collectives::single());
        }
        let group = Group::connect(address, port, rank, world_size, timeout)?;
        Ok(Collectives {
            rank,
            world_size,
            group: Some(group),
        })
    }

    /// This process's rank, 0 to `world_size() - 1`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// How many processes the run has.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Whether this is rank 0, the one that holds the run's randomness, ledger and files.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// Replaces every tensor, on every rank, by its sum over the ranks. The tensors of one
    /// call must share a dtype and a device (they travel as one buffer).
    pub fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<(), CoreError> {
        match &self.group {
            None => Ok(()),
            Some(group) => group.call(tensors, shim::all_reduce_sum),
        }
    }

    /// Replaces every tensor, on every rank, by rank `root`'s. The tensors of one call must
    /// share a dtype and a device, and have the same shapes on every rank.
    pub fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<(), CoreError> {
        if root >= self.world_size {
            return Err(CoreError::Collective(format!(
                "broadcast from rank {root} in a group of {}",
                self.world_size
            )));
        }
        match &self.group {
            None => Ok(()),
            Some(group) => group.call(tensors, |handle, pointers, error| {
                shim::broadcast(handle, pointers, root as i32, error)
            }),
        }
    }

    /// Returns once every rank has reached it.
    pub fn barrier(&self) -> Result<(), CoreError> {
        match &self.group {
            None => Ok(()),
            Some(group) => group.call(&mut [], |handle, _, error| shim::barrier(handle, error)),
        }
    }
}

fn parse_count(name: &str, value: &str) -> Result<usize, CoreError> {
    value
        .trim()
        .parse()
        .map_err(|_| CoreError::Collective(format!("{name}={value} is not a non-negative integer")))
}

/// The shim's handle on a c10d Gloo group and its store; freed on drop.
#[derive(Debug)]
struct Group(NonNull<c_void>);

/// Room for the shim's error messages.
const ERROR_LEN: usize = 1024;

impl Group {
    fn connect(
        address: &str,
        port: u16,
        rank: usize,
        world_size: usize,
        timeout: Duration,
    ) -> Result<Self, CoreError> {
        let address = CString::new(address)
            .map_err(|_| CoreError::Collective("the rendezvous address holds a NUL byte".into()))?;
        let mut error = vec![0u8; ERROR_LEN];
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let handle = shim::connect(
            &address,
            port as i32,
            rank as i32,
            world_size as i32,
            timeout_ms,
            &mut error,
        );
        NonNull::new(handle).map(Group).ok_or_else(|| {
            CoreError::Collective(format!(
                "rank {rank} of {world_size} could not join the group at {}:{port}: {}",
                address.to_string_lossy(),
                message(&error)
            ))
        })
    }

    fn call(
        &self,
        tensors: &mut [Tensor],
        op: impl FnOnce(NonNull<c_void>, &mut [*mut c_void], &mut [u8]) -> i32,
    ) -> Result<(), CoreError> {
        let mut pointers: Vec<*mut c_void> =
            tensors.iter_mut().map(|t| t.as_mut_ptr().cast()).collect();
        let mut error = vec![0u8; ERROR_LEN];
        match op(self.0, &mut pointers, &mut error) {
            0 => Ok(()),
            _ => Err(CoreError::Collective(message(&error))),
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        shim::free(self.0);
    }
}

fn message(error: &[u8]) -> String {
    let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
    String::from_utf8_lossy(&error[..end]).trim().to_string()
}

#[cfg(collectives_shim)]
#[allow(unsafe_code)]
mod shim {
    use std::ffi::{c_char, c_void, CStr};
    use std::ptr::NonNull;

    extern "C" {
        fn dp_collectives_connect(
            address: *const c_char,
            port: i32,
            rank: i32,
            world_size: i32,
            timeout_ms: i64,
            error: *mut c_char,
            error_len: usize,
        ) -> *mut c_void;
        fn dp_collectives_all_reduce_sum(
            group: *mut c_void,
            tensors: *mut *mut c_void,
            n: usize,
            error: *mut c_char,
            error_len: usize,
        ) -> i32;
        fn dp_collectives_broadcast(
            group: *mut c_void,
            tensors: *mut *mut c_void,
            n: usize,
            root: i32,
            error: *mut c_char,
            error_len: usize,
        ) -> i32;
        fn dp_collectives_barrier(group: *mut c_void, error: *mut c_char, error_len: usize) -> i32;
        fn dp_collectives_free(group: *mut c_void);
    }

    pub fn connect(
        address: &CStr,
        port: i32,
        rank: i32,
        world_size: i32,
        timeout_ms: i64,
        error: &mut [u8],
    ) -> *mut c_void {
        // SAFETY: `address` is NUL-terminated and outlives the call; the shim writes at most
        // `error.len()` bytes into `error`, and catches every C++ exception.
        unsafe {
            dp_collectives_connect(
                address.as_ptr(),
                port,
                rank,
                world_size,
                timeout_ms,
                error.as_mut_ptr().cast(),
                error.len(),
            )
        }
    }

    pub fn all_reduce_sum(
        group: NonNull<c_void>,
        tensors: &mut [*mut c_void],
        error: &mut [u8],
    ) -> i32 {
        // SAFETY: `group` came from `connect` and is not freed until the owning `Group` drops;
        // each pointer is a live `at::Tensor` borrowed mutably by the caller for the call; the
        // shim writes at most `error.len()` bytes into `error` and catches every exception.
        unsafe {
            dp_collectives_all_reduce_sum(
                group.as_ptr(),
                tensors.as_mut_ptr(),
                tensors.len(),
                error.as_mut_ptr().cast(),
                error.len(),
            )
        }
    }

    pub fn broadcast(
        group: NonNull<c_void>,
        tensors: &mut [*mut c_void],
        root: i32,
        error: &mut [u8],
    ) -> i32 {
        // SAFETY: as for `all_reduce_sum`.
        unsafe {
            dp_collectives_broadcast(
                group.as_ptr(),
                tensors.as_mut_ptr(),
                tensors.len(),
                root,
                error.as_mut_ptr().cast(),
                error.len(),
            )
        }
    }

    pub fn barrier(group: NonNull<c_void>, error: &mut [u8]) -> i32 {
        // SAFETY: as for `all_reduce_sum`, without tensors.
        unsafe { dp_collectives_barrier(group.as_ptr(), error.as_mut_ptr().cast(), error.len()) }
    }

    pub fn free(group: NonNull<c_void>) {
        // SAFETY: `group` came from `connect`, and its owning `Group` is being dropped, so no
        // call uses it after this one.
        unsafe { dp_collectives_free(group.as_ptr()) }
    }
}

/// Without libtorch's c10d headers at build time: no group can be joined.
#[cfg(not(collectives_shim))]
mod shim {
    use std::ffi::{c_void, CStr};
    use std::ptr::NonNull;

    const MISSING: &[u8] = b"this build has no collectives: libtorch's c10d headers were not found when dp-core was built\0";

    pub fn connect(_: &CStr, _: i32, _: i32, _: i32, _: i64, error: &mut [u8]) -> *mut c_void {
        let n = MISSING.len().min(error.len());
        error[..n].copy_from_slice(&MISSING[..n]);
        std::ptr::null_mut()
    }
    pub fn all_reduce_sum(_: NonNull<c_void>, _: &mut [*mut c_void], _: &mut [u8]) -> i32 {
        unreachable!("no group can exist without the shim")
    }
    pub fn broadcast(_: NonNull<c_void>, _: &mut [*mut c_void], _: i32, _: &mut [u8]) -> i32 {
        unreachable!("no group can exist without the shim")
    }
    pub fn barrier(_: NonNull<c_void>, _: &mut [u8]) -> i32 {
        unreachable!("no group can exist without the shim")
    }
    pub fn free(_: NonNull<c_void>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    /// Runs `body(rank)` on `world_size` threads, each joined to one group on the loopback.
    fn on_ranks<T: Send + 'static>(
        world_size: usize,
        timeout: Duration,
        body: impl Fn(Collectives) -> T + Send + Sync + Clone + 'static,
    ) -> Vec<T> {
        let port = free_port();
        let threads: Vec<_> = (0..world_size)
            .map(|rank| {
                let body = body.clone();
                std::thread::spawn(move || {
                    let group =
                        Collectives::connect("127.0.0.1", port, rank, world_size, timeout).unwrap();
                    body(group)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn two_ranks_sum_broadcast_and_meet() {
        let results = on_ranks(2, Duration::from_secs(60), |group| {
            let rank = group.rank() as f64;
            // Two tensors of different shapes travel as one buffer and come back in place.
            let mut sums = [
                Tensor::from_slice(&[1.0f32, 2.0]) * (rank + 1.0),
                Tensor::full([2, 2], rank + 10.0, (Kind::Float, Device::Cpu)),
            ];
            group.all_reduce_sum(&mut sums).unwrap();
            let mut from_one = [Tensor::from_slice(&[rank, rank * 2.0])];
            group.broadcast(&mut from_one, 1).unwrap();
            group.barrier().unwrap();
            (
                Vec::<f32>::try_from(&sums[0]).unwrap(),
                Vec::<f32>::try_from(sums[1].flatten(0, -1)).unwrap(),
                Vec::<f64>::try_from(&from_one[0]).unwrap(),
            )
        });
        for (sum, square, broadcast) in results {
            assert_eq!(sum, [3.0, 6.0]);
            assert_eq!(square, [21.0; 4]);
            assert_eq!(broadcast, [1.0, 2.0]);
        }
    }

    #[test]
    fn a_process_alone_needs_no_group_and_every_collective_is_a_no_op() {
        let alone = Collectives::single();
        let mut t = [Tensor::from_slice(&[5.0f32])];
        alone.all_reduce_sum(&mut t).unwrap();
        alone.broadcast(&mut t, 0).unwrap();
        alone.barrier().unwrap();
        assert_eq!(Vec::<f32>::try_from(&t[0]).unwrap(), [5.0]);
        assert!(alone.is_leader() && alone.world_size() == 1);
        assert!(alone.broadcast(&mut t, 1).is_err());
    }

    #[test]
    fn a_peer_that_never_comes_or_leaves_is_an_error_not_an_abort() {
        // Rank 1 of 2 never joins: rank 0 gives up after the timeout with an error.
        let error = Collectives::connect("127.0.0.1", free_port(), 0, 2, Duration::from_secs(2))
            .unwrap_err();
        assert!(matches!(error, CoreError::Collective(_)), "{error}");
        // Rank 1 leaves after joining: rank 0's next all-reduce fails, within the timeout.
        let results = on_ranks(2, Duration::from_secs(10), |group| {
            if group.rank() == 1 {
                drop(group);
                return None;
            }
            let mut t = [Tensor::from_slice(&[1.0f32])];
            Some(group.all_reduce_sum(&mut t).map_err(|e| e.to_string()))
        });
        let outcome = results[0].clone().unwrap();
        assert!(outcome.is_err(), "{outcome:?}");
        assert!(Collectives::connect("127.0.0.1", 1, 2, 2, DEFAULT_TIMEOUT).is_err());
    }
}
