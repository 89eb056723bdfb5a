//! Log lines gathered in memory and written in batches by a thread of their own: a request
//! that logs (an access line) copies its line into a buffer and goes on. The writer wakes when
//! the first line lands in an empty buffer, lets more gather for [`PACE`], and writes them in
//! one go, so lines cost neither a system call nor a thread wake-up each. When the writer
//! falls [`CAP`] bytes behind, lines are dropped and counted, and a line saying how many comes
//! next.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

use crate::sync::Mutex;

/// How long the writer lets lines gather after the first of a batch.
pub const PACE: Duration = Duration::from_millis(10);

/// Bytes waiting to be written beyond which new lines are dropped.
pub const CAP: usize = 8 << 20;

/// A buffer kept between batches is given back past this size.
const KEEP: usize = 1 << 20;

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    dropped: u64,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    writer: OnceLock<Thread>,
    closed: AtomicBool,
}

/// Where the subscriber's layers write: cheap to clone, every clone feeding the same thread.
#[derive(Clone)]
pub struct Lines(Arc<Shared>);

/// Stops the writer once it has written every line given before; see [`Lines`].
pub struct Writing {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Start a thread named `name` writing the lines given to the returned [`Lines`] to `out`.
pub fn spawn<W: Write + Send + 'static>(name: &str, out: W) -> io::Result<(Lines, Writing)> {
    let shared = Arc::new(Shared::default());
    let thread = std::thread::Builder::new().name(name.to_owned()).spawn({
        let shared = Arc::clone(&shared);
        move || write_batches(&shared, out)
    })?;
    let _ = shared.writer.set(thread.thread().clone());
    Ok((
        Lines(Arc::clone(&shared)),
        Writing {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        // Read before the buffer is taken: once closed, this batch holds every line given.
        let closing = shared.closed.load(Ordering::Acquire);
        let dropped = {
            let mut pending = shared.pending.lock();
            std::mem::swap(&mut batch, &mut pending.bytes);
            std::mem::take(&mut pending.dropped)
        };
        let wrote = !batch.is_empty() || dropped > 0;
        if dropped > 0 {
            let note = format!("{dropped} log lines were dropped: the log writer fell behind\n");
            let _ = out.write_all(note.as_bytes());
        }
        if !batch.is_empty() {
            // A failed write loses its lines; there is nowhere else to say so.
            let _ = out.write_all(&batch);
        }
        if wrote {
            let _ = out.flush();
        }
        batch.clear();
        if batch.capacity() > KEEP {
            batch = Vec::new();
        }
        if closing {
            return;
        }
        if wrote {
            std::thread::sleep(PACE);
        } else {
            // Woken by the line that lands in the empty buffer, or by the close.
            std::thread::park();
        }
    }
}

impl Lines {
    fn wake(&self) {
        if let Some(writer) = self.0.writer.get() {
            writer.unpark();
        }
    }
}

impl Write for &Lines {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut pending = self.0.pending.lock();
        if pending.bytes.len() + line.len() > CAP {
            pending.dropped += 1;
            return Ok(line.len());
        }
        let first = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        drop(pending);
        if first {
            self.wake();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = &'a Lines;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Writing {
    /// Write out every line given so far and stop the thread.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose bytes and write calls the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut s = self.0.lock();
            s.0.extend_from_slice(buf);
            s.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_given_is_written_once_closed_in_few_writes() {
        let sink = Sink::default();
        let (lines, writing) = spawn("test-lines", sink.clone()).unwrap();
        for i in 0..1000 {
            (&lines)
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        writing.close();
        let (bytes, writes) = sink.0.lock().clone();
        let text = String::from_utf8(bytes).unwrap();
        let got: Vec<&str> = text.lines().collect();
        assert_eq!(got.len(), 1000);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, l)| *l == format!("line {i}"))
        );
        assert!(writes < 100, "{writes} writes for 1000 lines");
    }

    #[test]
    fn a_line_alone_is_written_without_a_close() {
        let sink = Sink::default();
        let (lines, _writing) = spawn("test-lines", sink.clone()).unwrap();
        (&lines).write_all(b"alone\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().0.is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.0.lock().0, b"alone\n");
    }

    #[test]
    fn lines_past_the_cap_are_dropped_and_counted() {
        /// Blocks every write until released.
        struct Stuck(Arc<std::sync::Barrier>, Sink);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.wait();
                self.1.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let gate = Arc::new(std::sync::Barrier::new(2));
        let (lines, writing) = spawn("test-lines", Stuck(Arc::clone(&gate), sink.clone())).unwrap();
        // The first line is taken and its write waits at the gate; then the buffer fills.
        (&lines).write_all(b"first\n").unwrap();
        while !lines.0.pending.lock().bytes.is_empty() {
            std::thread::yield_now();
        }
        let big = vec![b'x'; CAP / 4 - 1];
        let mut line = big.clone();
        line.push(b'\n');
        for _ in 0..6 {
            (&lines).write_all(&line).unwrap();
        }
        assert_eq!(lines.0.pending.lock().dropped, 2);
        // Release the first write, then each later one (the note and the batch).
        let release = std::thread::spawn(move || {
            for _ in 0..3 {
                gate.wait();
            }
        });
        writing.close();
        release.join().unwrap();
        let text = String::from_utf8(sink.0.lock().0.clone()).unwrap();
        assert!(
            text.starts_with("first\n2 log lines were dropped"),
            "{}",
            &text[..80]
        );
        assert_eq!(text.lines().filter(|l| l.starts_with('x')).count(), 4);
    }
}
