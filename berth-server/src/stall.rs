//! Deadlines on a connection that is busy but makes no progress. A request in flight keeps
//! its connection from being evicted or idle-closed (see `conn`), so without these a
//! client could hold connections forever by starting an upload and sending nothing more,
//! or by asking for a large blob and reading nothing of it.
//!
//! * [`WriteStall`] wraps the socket: a write that stays blocked (the client's receive
//!   window is full because it reads nothing) for the stall timeout fails, and the
//!   connection with it.
//! * [`BodyStall`] wraps an upload's body: no bytes for the stall timeout ends the body
//!   with an error, which the upload handles like a client that went away (nothing past
//!   the acknowledged offset is kept).
//!
//! Progress, not speed, is what counts: a slow client that keeps sending or reading is
//! never cut off.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Counts stalls: a `berth_connections_timed_out_total{stage=...}` series.
pub type StallCount = prometheus_client::metrics::counter::Counter;

/// A timer armed while an operation is blocked, disarmed as soon as it progresses.
struct Deadline {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    fn new(limit: Duration) -> Deadline {
        Deadline { limit, timer: None }
    }

    /// After a `Pending` from the inner operation: whether the wait has lasted too long.
    /// Polling the timer registers the task to be woken when it fires.
    fn blocked(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).is_ready()
    }

    fn progressed(&mut self) {
        self.timer = None;
    }
}

/// A socket whose writes fail once they have been blocked for the stall timeout.
pub struct WriteStall<T> {
    inner: T,
    deadline: Deadline,
    stalls: StallCount,
}

impl<T> WriteStall<T> {
    pub fn new(inner: T, limit: Duration, stalls: StallCount) -> WriteStall<T> {
        WriteStall {
            inner,
            deadline: Deadline::new(limit),
            stalls,
        }
    }

    fn check<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending => {
                if self.deadline.blocked(cx) {
                    self.stalls.inc();
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing for the stall timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            ready => {
                self.deadline.progressed();
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, r)
    }
}

/// A request body that ends with an error once no bytes have come for the stall timeout.
pub struct BodyStall<S> {
    inner: S,
    deadline: Deadline,
    stalls: StallCount,
}

impl<S> BodyStall<S> {
    pub fn new(inner: S, limit: Duration, stalls: StallCount) -> BodyStall<S> {
        BodyStall {
            inner,
            deadline: Deadline::new(limit),
            stalls,
        }
    }
}

impl<S, E> Stream for BodyStall<S>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: From<io::Error>,
{
    type Item = Result<bytes::Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Pending => {
                if self.deadline.blocked(cx) {
                    self.stalls.inc();
                    Poll::Ready(Some(Err(E::from(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing for the stall timeout",
                    )))))
                } else {
                    Poll::Pending
                }
            }
            ready => {
                self.deadline.progressed();
                ready
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_blocked_past_the_limit_fails_and_progress_resets_it() {
        // A pipe with a tiny buffer stands for a client with a full receive window.
        let (client, server) = tokio::io::duplex(16);
        let stalls = StallCount::default();
        let mut w = WriteStall::new(server, Duration::from_millis(200), stalls.clone());
        w.write_all(&[0; 16]).await.expect("fits the buffer");
        let started = tokio::time::Instant::now();
        let err = w.write_all(&[1; 16]).await.expect_err("nobody reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(stalls.get(), 1);

        // A reader that keeps up, slowly, is never cut off.
        let (mut client2, server2) = tokio::io::duplex(16);
        let mut w = WriteStall::new(server2, Duration::from_millis(200), stalls.clone());
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 8];
            while got < 160 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                got += tokio::io::AsyncReadExt::read(&mut client2, &mut buf)
                    .await
                    .expect("read");
            }
        });
        w.write_all(&[2; 160]).await.expect("slow but steady");
        reader.await.expect("reader");
        assert_eq!(stalls.get(), 1);
        drop(client);
    }

    #[tokio::test]
    async fn a_body_that_sends_nothing_ends_with_an_error() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, io::Error>>(1);
        let stalls = StallCount::default();
        let mut body = BodyStall::new(
            tokio_stream_from(rx),
            Duration::from_millis(150),
            stalls.clone(),
        );
        tx.send(Ok(bytes::Bytes::from_static(b"abc")))
            .await
            .expect("send");
        assert_eq!(
            body.next().await.expect("item").expect("bytes").as_ref(),
            b"abc"
        );
        let err = body.next().await.expect("item").expect_err("stalled");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(stalls.get(), 1);
        drop(tx);
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, io::Error>>,
    ) -> impl Stream<Item = Result<bytes::Bytes, io::Error>> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
