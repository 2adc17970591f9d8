"""Every word of a survey and its page, in English, Persian (right to left) and Thai.

A survey can add languages or override any string with its own ``translations``
(``{"fa": {"question": "...", "submit": "..."}}``); missing strings fall back to the
survey's default language, then to English. ``{company}`` in a string is replaced by the
survey's company name.
"""

from __future__ import annotations

from typing import Any

RTL = frozenset({"fa", "ar", "he", "ur"})

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "A quick question from {company}",
        "question_nps": "How likely are you to recommend {company} to a friend or colleague?",
        "question_csat": "How satisfied are you with {company}?",
        "question_ces": "How easy was it to get what you needed from {company}?",
        "low_nps": "Not at all likely", "high_nps": "Extremely likely",
        "low_csat": "Very unsatisfied", "high_csat": "Very satisfied",
        "low_ces": "Very difficult", "high_ces": "Very easy",
        "why": "What is the main reason for your score?",
        "why_hint": "Optional. Your own words help us most.",
        "reasons": "Anything in particular?",
        "submit": "Send",
        "choose": "Please choose a score first.",
        "thanks": "Thank you! Your answer has been recorded.",
        "thanks_why": "Would you like to tell us why?",
        "send_why": "Send my comment",
        "thanks_final": "Thank you for telling us. We read every answer.",
        "expired": "This survey link has expired. Thank you for your time all the same.",
        "used": "You have already answered this survey. Thank you!",
        "invalid": "This survey link is not valid. Please use the link from your message.",
        "email_subject": "A quick question from {company}",
        "email_intro": "Click a score to answer. It takes a few seconds.",
        "email_footer": "You received this because you are a customer of {company}.",
    },
    "fa": {
        "title": "یک پرسش کوتاه از {company}",
        "question_nps": "چقدر احتمال دارد {company} را به یک دوست یا همکار پیشنهاد کنید؟",
        "question_csat": "چقدر از {company} راضی هستید؟",
        "question_ces": "دریافت آنچه از {company} نیاز داشتید چقدر آسان بود؟",
        "low_nps": "اصلاً احتمال ندارد", "high_nps": "بسیار محتمل",
        "low_csat": "بسیار ناراضی", "high_csat": "بسیار راضی",
        "low_ces": "بسیار دشوار", "high_ces": "بسیار آسان",
        "why": "دلیل اصلی امتیاز شما چیست؟",
        "why_hint": "اختیاری است. نوشتهٔ خود شما بیشترین کمک را به ما می‌کند.",
        "reasons": "موضوع خاصی مد نظرتان است؟",
        "submit": "ارسال",
        "choose": "لطفاً ابتدا یک امتیاز انتخاب کنید.",
        "thanks": "سپاسگزاریم! پاسخ شما ثبت شد.",
        "thanks_why": "دوست دارید دلیلش را هم بگویید؟",
        "send_why": "ارسال توضیح",
        "thanks_final": "از اینکه برایمان نوشتید سپاسگزاریم. همهٔ پاسخ‌ها را می‌خوانیم.",
        "expired": ("مهلت این پیوند نظرسنجی به پایان رسیده است. "
                    "با این حال از وقتی که گذاشتید سپاسگزاریم."),
        "used": "شما پیش‌تر به این نظرسنجی پاسخ داده‌اید. سپاسگزاریم!",
        "invalid": "این پیوند نظرسنجی معتبر نیست. لطفاً از پیوند موجود در پیام خود استفاده کنید.",
        "email_subject": "یک پرسش کوتاه از {company}",
        "email_intro": "برای پاسخ، روی یک امتیاز کلیک کنید. چند ثانیه بیشتر طول نمی‌کشد.",
        "email_footer": "این پیام را دریافت کرده‌اید چون مشتری {company} هستید.",
    },
    "th": {
        "title": "คำถามสั้น ๆ จาก {company}",
        "question_nps": "คุณมีแนวโน้มจะแนะนำ {company} ให้เพื่อนหรือเพื่อนร่วมงานมากน้อยเพียงใด",
        "question_csat": "คุณพึงพอใจกับ {company} มากน้อยเพียงใด",
        "question_ces": "การได้รับสิ่งที่คุณต้องการจาก {company} ง่ายเพียงใด",
        "low_nps": "ไม่แนะนำเลย", "high_nps": "แนะนำอย่างแน่นอน",
        "low_csat": "ไม่พอใจอย่างมาก", "high_csat": "พอใจอย่างมาก",
        "low_ces": "ยากมาก", "high_ces": "ง่ายมาก",
        "why": "เหตุผลหลักที่คุณให้คะแนนนี้คืออะไร",
        "why_hint": "ไม่บังคับ ความคิดเห็นของคุณช่วยเราได้มากที่สุด",
        "reasons": "มีเรื่องใดเป็นพิเศษไหม",
        "submit": "ส่ง",
        "choose": "กรุณาเลือกคะแนนก่อน",
        "thanks": "ขอบคุณ! เราได้บันทึกคำตอบของคุณแล้ว",
        "thanks_why": "คุณอยากบอกเหตุผลกับเราไหม",
        "send_why": "ส่งความคิดเห็น",
        "thanks_final": "ขอบคุณที่บอกเรา เราอ่านทุกคำตอบ",
        "expired": "ลิงก์แบบสำรวจนี้หมดอายุแล้ว แต่ขอบคุณที่สละเวลา",
        "used": "คุณตอบแบบสำรวจนี้แล้ว ขอบคุณ!",
        "invalid": "ลิงก์แบบสำรวจนี้ไม่ถูกต้อง กรุณาใช้ลิงก์จากข้อความของคุณ",
        "email_subject": "คำถามสั้น ๆ จาก {company}",
        "email_intro": "คลิกคะแนนเพื่อตอบ ใช้เวลาเพียงไม่กี่วินาที",
        "email_footer": "คุณได้รับข้อความนี้เพราะคุณเป็นลูกค้าของ {company}",
    },
}

LANGUAGES = tuple(TEXT)


def strings(language: str, survey: dict[str, Any] | None = None) -> dict[str, str]:
    """All strings for ``language``: the survey's overrides, then built-ins, then English."""
    survey = survey or {}
    own: dict[str, dict[str, str]] = survey.get("translations") or {}
    default = survey.get("language") or "en"
    out: dict[str, str] = dict(TEXT["en"])
    for lang in (default, language):
        out.update(TEXT.get(lang, {}))
        out.update(own.get(lang, {}))
    company = survey.get("company") or "us"
    return {k: v.replace("{company}", company) for k, v in out.items()}


def pick_language(requested: str | None, available: list[str], default: str) -> str:
    """The best available language for a request such as ``fa-IR`` or ``th``."""
    for candidate in (requested or "").replace(",", " ").split():
        base = candidate.split(";")[0].split("-")[0].strip().lower()
        if base in available:
            return base
    return default


def direction(language: str) -> str:
    return "rtl" if language in RTL else "ltr"
