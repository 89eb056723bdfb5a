//! Server-sent events framing: bytes in, whole events out, however the network cut the bytes.
//! Lines end in `\n`, `\r\n` or `\r`; a blank line ends an event; `data:` lines of one event
//! join with `\n`; comments (`:`) and unknown fields are skipped.

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, when the server named the event type.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// An incremental parser; feed it reads with [`SseParser::push`], then drain
/// [`SseParser::next_event`].
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// A `\r` ended the last complete line; a `\n` right after it belongs to that line.
    after_cr: bool,
    pending: Event,
    has_data: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes as they came off the wire.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if the bytes pushed so far hold one.
    pub fn next_event(&mut self) -> Option<Event> {
        let mut consumed = 0;
        let mut out = None;
        while out.is_none() {
            let rest = &self.buf[consumed..];
            if self.after_cr && rest.first() == Some(&b'\n') {
                consumed += 1;
                self.after_cr = false;
                continue;
            }
            let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                break;
            };
            self.after_cr = rest[end] == b'\r';
            let line = String::from_utf8_lossy(&rest[..end]).into_owned();
            consumed += end + 1;
            out = self.line(&line);
        }
        self.buf.drain(..consumed);
        out
    }

    /// Handles one line; returns an event when the line was blank and ended one.
    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            if !self.has_data && self.pending.event.is_none() {
                return None;
            }
            self.has_data = false;
            return Some(std::mem::take(&mut self.pending));
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.pending.event = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> Event {
        Event {
            event: None,
            data: s.to_owned(),
        }
    }

    fn all(p: &mut SseParser) -> Vec<Event> {
        std::iter::from_fn(|| p.next_event()).collect()
    }

    #[test]
    fn whole_events() {
        let mut p = SseParser::new();
        p.push(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(all(&mut p), vec![data("{\"a\":1}"), data("[DONE]")]);
    }

    #[test]
    fn events_split_across_reads_at_every_byte() {
        let wire = b"data: {\"x\": \"\xc3\xa9\"}\r\n\r\n: keep-alive\n\nevent: error\ndata: bad\n\ndata:[DONE]\n\n";
        let expected = vec![
            data("{\"x\": \"\u{e9}\"}"),
            Event {
                event: Some("error".into()),
                data: "bad".into(),
            },
            data("[DONE]"),
        ];
        for cut in 0..wire.len() {
            let mut p = SseParser::new();
            let mut got = Vec::new();
            p.push(&wire[..cut]);
            got.extend(all(&mut p));
            p.push(&wire[cut..]);
            got.extend(all(&mut p));
            assert_eq!(got, expected, "cut at {cut}");
        }
        let mut p = SseParser::new();
        let mut got = Vec::new();
        for b in wire {
            p.push(&[*b]);
            got.extend(all(&mut p));
        }
        assert_eq!(got, expected, "one byte per read");
    }

    #[test]
    fn multi_line_data_and_bare_cr() {
        let mut p = SseParser::new();
        p.push(b"data: one\rdata: two\r\rdata\n\n");
        assert_eq!(all(&mut p), vec![data("one\ntwo"), data("")]);
    }

    #[test]
    fn incomplete_event_waits() {
        let mut p = SseParser::new();
        p.push(b"data: [DONE]\n");
        assert_eq!(p.next_event(), None);
        p.push(b"\n");
        assert_eq!(p.next_event(), Some(data("[DONE]")));
    }
}
