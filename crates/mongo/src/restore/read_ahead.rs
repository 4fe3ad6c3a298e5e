//! Reading (and so decompressing) an archive on a second thread while the first parses it.
//!
//! The verify pass reads the whole archive before the target is touched, so the target server sits idle and one
//! of the machine's cores with it: decompressing on one thread while the other parses and checksums the
//! documents shortens the pass that every restore waits for (measured on `bench/run.py`'s medium dataset, see
//! docs/benchmarks.md). The thread is scoped: it has always ended when [`with_read_ahead`] returns.

use std::io::{self, Read};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};

/// Bytes handed over at a time: large enough that the hand-over costs nothing next to decompressing them.
const CHUNK: usize = 1024 * 1024;
/// Chunks read ahead of the consumer (the memory bound: `(DEPTH + 2) × CHUNK`).
const DEPTH: usize = 4;

/// Runs `consume` on the bytes of `input`, with `input` read on a scoped thread, [`DEPTH`] chunks ahead. A read
/// error of `input` reaches `consume` at the point where it happened; when `consume` returns early, the reading
/// thread stops at its next chunk.
pub(crate) fn with_read_ahead<T>(
    input: Box<dyn Read + Send>,
    consume: impl FnOnce(&mut dyn Read) -> T,
) -> T {
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
        let (recycle_tx, recycle_rx) = channel::<Vec<u8>>();
        s.spawn(move || produce(input, &tx, &recycle_rx));
        let mut reader = ChannelReader {
            rx,
            recycle: recycle_tx,
            cur: Vec::new(),
            pos: 0,
        };
        let out = consume(&mut reader);
        // Closing the channel makes the reading thread's next hand-over fail, so it stops (and the scope ends).
        drop(reader);
        out
    })
}

fn produce(
    mut input: Box<dyn Read + Send>,
    tx: &std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
    recycle: &Receiver<Vec<u8>>,
) {
    loop {
        let mut buf = recycle
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        buf.resize(CHUNK, 0);
        let mut filled = 0;
        let result = loop {
            if filled == CHUNK {
                break Ok(());
            }
            match input.read(&mut buf[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(filled);
        let at_end = filled < CHUNK;
        if filled > 0 && tx.send(Ok(buf)).is_err() {
            return;
        }
        match result {
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
            Ok(()) if at_end => return,
            Ok(()) => {}
        }
    }
}

struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    recycle: Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    let done = std::mem::replace(&mut self.cur, next);
                    self.pos = 0;
                    // The reading thread may be gone already: then the buffer is simply freed.
                    let _ = self.recycle.send(done);
                }
                Ok(Err(e)) => return Err(e),
                // The reading thread finished: end of input.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its data in reads of odd sizes, then fails once if asked to.
    struct Jerky {
        data: Vec<u8>,
        at: usize,
        fail_at_end: bool,
    }

    impl Read for Jerky {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                return if self.fail_at_end {
                    Err(io::Error::other("disk went away"))
                } else {
                    Ok(0)
                };
            }
            let n = out
                .len()
                .min(self.data.len() - self.at)
                .min(1 + self.at % 77_777);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn yields_the_same_bytes_whatever_the_sizes() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 7 * CHUNK + 12_345] {
            let want = data(len);
            let input = Box::new(Jerky {
                data: want.clone(),
                at: 0,
                fail_at_end: false,
            });
            let got = with_read_ahead(input, |r| {
                let mut got = Vec::new();
                // Small reads on this side too, as the archive reader makes.
                let mut buf = [0u8; 4099];
                loop {
                    let n = r.read(&mut buf).expect("read");
                    if n == 0 {
                        break got;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
            });
            assert_eq!(got.len(), want.len());
            assert!(got == want, "bytes differ for length {len}");
        }
    }

    #[test]
    fn a_read_error_arrives_after_the_bytes_before_it() {
        let want = data(3 * CHUNK + 5);
        let input = Box::new(Jerky {
            data: want.clone(),
            at: 0,
            fail_at_end: true,
        });
        let (got, err) = with_read_ahead(input, |r| {
            let mut got = Vec::new();
            let err = r.read_to_end(&mut got).expect_err("must fail");
            (got, err)
        });
        assert!(got == want, "every byte before the error is delivered");
        assert!(err.to_string().contains("disk went away"), "{err}");
    }

    #[test]
    fn stopping_early_ends_the_reading_thread() {
        // An endless input: returning must not wait for its end.
        struct Endless;
        impl Read for Endless {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                out.fill(7);
                Ok(out.len())
            }
        }
        let first = with_read_ahead(Box::new(Endless), |r| {
            let mut b = [0u8; 10];
            r.read_exact(&mut b).map(|()| b)
        });
        assert_eq!(first.expect("read"), [7u8; 10]);
    }
}
