//! `dp-train train --workers N`: starts N processes of this binary on this machine, joined by
//! the environment a launcher gives (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
//! `MASTER_ADDR=127.0.0.1`, a free `MASTER_PORT`), as `torchrun --standalone` does, and waits
//! for them. Rank 0 keeps this terminal's output; the others print only their errors. When one
//! process fails, the others are stopped and the run ends with an error naming it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dp_core::collectives::{MASTER_ADDR_VAR, MASTER_PORT_VAR, RANK_VAR, WORLD_SIZE_VAR};
use dp_train::TrainError;

/// This process's rank among those of its machine (which GPU it takes), as torchrun names it.
pub(crate) const LOCAL_RANK_VAR: &str = "LOCAL_RANK";
/// The number of processes the launcher started on this machine.
pub(crate) const LOCAL_WORLD_SIZE_VAR: &str = "LOCAL_WORLD_SIZE";

/// Runs this binary, with its own arguments, as `workers` local processes.
pub(crate) fn run_local(workers: usize) -> Result<(), TrainError> {
    let exe = std::env::current_exe()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut children: Vec<Option<Child>> = Vec::with_capacity(workers);
    for rank in 0..workers {
        let mut command = Command::new(&exe);
        command
            .args(&args)
            .env(RANK_VAR, rank.to_string())
            .env(WORLD_SIZE_VAR, workers.to_string())
            .env(LOCAL_RANK_VAR, rank.to_string())
            .env(LOCAL_WORLD_SIZE_VAR, workers.to_string())
            .env(MASTER_ADDR_VAR, "127.0.0.1")
            .env(MASTER_PORT_VAR, port.to_string());
        if rank > 0 {
            command.stdout(Stdio::null());
        }
        match command.spawn() {
            Ok(child) => children.push(Some(child)),
            Err(e) => {
                stop(&mut children);
                return Err(TrainError::Distributed(format!(
                    "could not start worker {rank} of {workers}: {e}"
                )));
            }
        }
    }
    loop {
        let mut running = 0;
        for rank in 0..workers {
            let Some(child) = children[rank].as_mut() else {
                continue;
            };
            match child.try_wait()? {
                None => running += 1,
                Some(status) if status.success() => children[rank] = None,
                Some(status) => {
                    children[rank] = None;
                    stop(&mut children);
                    return Err(TrainError::Distributed(format!(
                        "worker {rank} of {workers} failed ({status}); the others were stopped. Rank 0's run folder holds the completed steps only: rerun the same command to resume"
                    )));
                }
            }
        }
        if running == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(children: &mut [Option<Child>]) {
    for child in children.iter_mut().flatten() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
