//! Work that runs on the leader only (the Meilisearch indexer, the subscription notifier): a
//! [`Supervisor`] on every node checks leadership every 250 ms and starts a [`Runner`] actor for
//! the work while the node leads, stopping it ([`Stop`]) when it no longer does. The work's loop
//! itself also ends as soon as `raft.leads()` turns false.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::future::LocalBoxFuture;

use super::msg::Stop;
use crate::consensus::RaftHandle;

/// A leader-only loop.
pub trait LeaderWork: 'static {
    fn raft(&self) -> &RaftHandle;
    /// The loop; it returns when this node no longer leads.
    fn run(self: Arc<Self>) -> LocalBoxFuture<'static, ()>;
    /// Told when the loop starts (`true`) and stops (`false`) on this node.
    fn running(&self, on: bool);
}

/// Runs one [`LeaderWork`] loop until it ends or the supervisor stops it.
pub struct Runner<W: LeaderWork> {
    work: Arc<W>,
}

impl<W: LeaderWork> Actor for Runner<W> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.work.running(true);
        ctx.spawn(self.work.clone().run().into_actor(self).map(|_, _, ctx| ctx.stop()));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.work.running(false);
    }
}

impl<W: LeaderWork> Handler<Stop> for Runner<W> {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Starts the work on the leader and stops it elsewhere.
pub struct Supervisor<W: LeaderWork> {
    work: Arc<W>,
    running: Option<Addr<Runner<W>>>,
}

impl<W: LeaderWork> Supervisor<W> {
    pub fn new(work: Arc<W>) -> Supervisor<W> {
        Supervisor { work, running: None }
    }

    fn tick(&mut self) {
        if self.running.as_ref().is_some_and(|a| !a.connected()) {
            self.running = None;
        }
        match (self.work.raft().leads(), &self.running) {
            (true, None) => self.running = Some(Runner { work: self.work.clone() }.start()),
            (false, Some(a)) => {
                a.do_send(Stop);
                self.running = None;
            }
            _ => {}
        }
    }
}

impl<W: LeaderWork> Actor for Supervisor<W> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_millis(250), |act, _| act.tick());
    }
}
