//! A small writer for EC2's XML: element names are exactly the `locationName`s of the EC2 service
//! model, lists are `<xSet><item>…</item></xSet>`.

use quick_xml::escape::escape;

pub const NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

pub struct Xml {
    buf: String,
}

impl Xml {
    /// Start `<{Action}Response xmlns=…><requestId>…</requestId>`.
    pub fn response(action: &str, request_id: &str) -> Self {
        let mut buf = String::with_capacity(1024);
        buf.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<");
        buf.push_str(action);
        buf.push_str("Response xmlns=\"");
        buf.push_str(NS);
        buf.push_str("\"><requestId>");
        buf.push_str(request_id);
        buf.push_str("</requestId>");
        Xml { buf }
    }

    pub fn finish(mut self, action: &str) -> String {
        self.buf.push_str("</");
        self.buf.push_str(action);
        self.buf.push_str("Response>");
        self.buf
    }

    pub fn open(&mut self, tag: &str) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(tag);
        self.buf.push('>');
        self
    }

    pub fn close(&mut self, tag: &str) -> &mut Self {
        self.buf.push_str("</");
        self.buf.push_str(tag);
        self.buf.push('>');
        self
    }

    pub fn leaf(&mut self, tag: &str, value: impl std::fmt::Display) -> &mut Self {
        let v = value.to_string();
        self.open(tag);
        self.buf.push_str(&escape(v.as_str()));
        self.close(tag)
    }

    pub fn opt<T: std::fmt::Display>(&mut self, tag: &str, value: Option<T>) -> &mut Self {
        if let Some(v) = value {
            self.leaf(tag, v);
        }
        self
    }

    /// `<tag><item>…</item>…</tag>`, always present (botocore then parses an empty list).
    pub fn set<T>(
        &mut self,
        tag: &str,
        items: impl IntoIterator<Item = T>,
        mut each: impl FnMut(&mut Self, T),
    ) -> &mut Self {
        self.open(tag);
        for it in items {
            self.open("item");
            each(self, it);
            self.close("item");
        }
        self.close(tag)
    }

    /// `<tagSet>` of key/value items; omitted when there are none, as EC2 does.
    pub fn tag_set<'a>(&mut self, tags: impl IntoIterator<Item = (&'a String, &'a String)>) -> &mut Self {
        let tags: Vec<_> = tags.into_iter().collect();
        if tags.is_empty() {
            return self;
        }
        self.set("tagSet", tags, |x, (k, v)| {
            x.leaf("key", k).leaf("value", v);
        })
    }
}

/// The EC2 error document.
pub fn error(code: &str, message: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        escape(code),
        escape(message),
        request_id
    )
}
